"""
Loaded by Python at start (this folder on PYTHONPATH) in the unmodified
wes-client's process: every requests.Session presents the frontend's client
certificate, which wes-client has no option for.
"""

import os

import requests

_CERTIFICATE = (os.environ["KREE_TEST_CLIENT_CERT"], os.environ["KREE_TEST_CLIENT_KEY"])
_session_init = requests.Session.__init__


def _with_certificate(self, *args, **kwargs):
    _session_init(self, *args, **kwargs)
    self.cert = _CERTIFICATE


requests.Session.__init__ = _with_certificate
