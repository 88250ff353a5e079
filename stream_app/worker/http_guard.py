"""Malformed HTTP requests: a short JSON 400 and one WARNING line, never an echo or traceback.

aiohttp's server parses a request before any view sees it. When the parse fails (a request
line or header over 8,190 bytes, a NUL or a raw non-ASCII byte in the path, a bad method or
version: ``aiohttp.http_exceptions.HttpProcessingError``), ``RequestHandler.handle_error``
answers it, and there aiohttp (3.14) did two things a worker must not do:

* It logged ``Error handling request from <peer>`` at ERROR with the traceback, whose last
  line holds the first ~100 bytes of the offending line: a customer id from the path
  (``GET /customers/c11-0000042?pad=AAAA…``) went into the worker's log, unhashed even with
  ``PSEUDONYM_KEY``, and every probe added a dozen lines.
* Its 400 body repeated those bytes (``Got more than 8190 bytes when reading:
  bytearray(b'/customers/c11-0000042?pad=AAAA…')``).

:func:`stream_app.worker.patches.install_quiet_bad_requests` wraps ``handle_error`` so
that a client's protocol error is answered
``{"error": "malformed or oversize HTTP request"}`` with the parser's 4xx status, the
connection closed, and logged as one WARNING line naming the peer and the exception's
class only (thinned to one line per :data:`REPEAT_LOG_INTERVAL_S` by
:class:`~stream_app.worker.connectivity.RepeatFilter`, so a flood of bad requests cannot flood the
log). Every other error (a 500 from a view, a 504) is left to aiohttp. The limits
themselves stay aiohttp's defaults (``max_line_size``/``max_field_size`` 8,190 bytes).
``tests/integration/test_security.py`` sends such requests to a running worker and checks the answer
and the log. aiohttp is pinned below 3.15 in ``pyproject.toml``: the wrapped method's
signature is aiohttp's, checked when the patch is installed; re-check it on an upgrade.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response

from stream_app.worker.connectivity import REPEAT_LOG_INTERVAL_S, RepeatFilter

log = logging.getLogger("stream_app.http")
log.addFilter(RepeatFilter(every=REPEAT_LOG_INTERVAL_S))

#: The body of every answer to a request the HTTP parser rejected (nothing of the request).
BAD_REQUEST_BODY = orjson.dumps({"error": "malformed or oversize HTTP request"})


def answer_bad_request(request: BaseRequest, status: int,
                       exc: BaseException | None) -> Response | None:
    """The answer to ``request``, which aiohttp's ``RequestHandler.handle_error`` is
    about to answer with ``status`` for ``exc``: a short JSON 4xx, the connection closed,
    when the HTTP parser rejected the request (and nothing was sent yet); None, to leave
    it to aiohttp, for every other error."""
    if (not isinstance(exc, HttpProcessingError) or not 400 <= status < 500
            or request.writer.output_size > 0):
        return None
    log.warning("rejected a malformed HTTP request from %s: %s (status %d)",
                request.remote, type(exc).__name__, status)
    response = Response(status=status, body=BAD_REQUEST_BODY, content_type="application/json")
    response.force_close()
    return response
