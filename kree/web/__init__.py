"""
What every dialect on the mutual-TLS listener shares: the TLS context and
the peer's identity (L{kree.web.tls}), the site with its limits
(L{kree.web.site}), routing (L{kree.web.routing}), strict JSON
(L{kree.web.jsontext}), and the resource that authenticates, dispatches to
a dialect by path prefix, renders errors in the dialect's shape and audits
(L{kree.web.resource}).  Dialects (kree.api for /v1) bring their routes and
body formats and call the job service; nothing here knows a use case.
"""
