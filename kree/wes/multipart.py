"""
A strict reader of C{multipart/form-data} bodies (RFC 7578), for POST /runs.

twisted.web's own parsing is off on the listener (kree.web.site): it drops
the file names WES needs and answers a malformed body with a bare 400 that
is no dialect's shape.  This reader keeps the file name of every part and
refuses, as L{MalformedForm}, anything it would have to guess about: no
boundary, a missing closing boundary, a part without a form-data name,
a transfer encoding other than binary.
"""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser

import attrs

from kree.errors import HttpError

MEDIA_TYPE = "multipart/form-data"


class MalformedForm(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "malformed_form", message)


@attrs.frozen
class Part:
    name: str
    data: bytes
    #: The part's file name (Content-Disposition filename), None for a plain field.
    filename: str | None = None

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedForm(f"form field {self.name!r} is not UTF-8") from None


def parse_form(content_type: str, body: bytes) -> list[Part]:
    """
    The parts of a C{multipart/form-data} body, in order.

    @param content_type: the request's whole Content-Type header.
    @raise MalformedForm: the body is not a well-formed form.
    """
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != MEDIA_TYPE:
        # A 400, not a 415: WES documents 400 for every malformed request.
        raise MalformedForm(f"the body must be {MEDIA_TYPE}, not {media_type or 'untyped'}")
    if "\r" in content_type or "\n" in content_type:
        raise MalformedForm("the Content-Type header holds a line break")
    head = f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.get_boundary():
        raise MalformedForm("the multipart/form-data Content-Type names no boundary")
    if not message.is_multipart() or message.defects:
        why = "; ".join(type(d).__name__ for d in message.defects) or "no parts"
        raise MalformedForm(f"the body is not a well-formed multipart/form-data form ({why})")
    return [_part(part) for part in message.get_payload()]


def _part(part: Message) -> Part:
    if part.defects or part.is_multipart():
        raise MalformedForm("a part of the form is malformed")
    if part.get_content_disposition() != "form-data":
        raise MalformedForm("every part needs Content-Disposition: form-data")
    name = part.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise MalformedForm("a part of the form has no name")
    encoding = (part.get("content-transfer-encoding") or "binary").strip().lower()
    if encoding not in ("binary", "7bit", "8bit"):
        raise MalformedForm(f"part {name!r}: Content-Transfer-Encoding {encoding} is not "
                            "allowed in a form (RFC 7578 section 4.7)")
    data = part.get_payload(decode=True)
    return Part(name=name, data=data if data is not None else b"",
                filename=part.get_filename())
