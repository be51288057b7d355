"""The one place where vendor HTTP answers become provider errors.

Every client sends its requests through `VendorHTTP.request_json`; it maps transport faults,
HTTP statuses and malformed bodies to the taxonomy in `providers.base`. A vendor whose error
codes differ from the common meaning (AI/ML API's 403 out-of-credits, Novita's 400/403 balance
errors) passes a `classify` hook that sees the status and parsed body first.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Self

import aiohttp

from providers.base import (
    AuthError,
    ContentBlockedError,
    OutOfFundsError,
    ProviderError,
    ProviderSettings,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)

__all__ = [
    "Classifier",
    "VendorHTTP",
    "classify_error",
    "content_type_from_name",
    "decode_data_uri",
    "error_code",
    "error_for_status",
    "error_text",
    "parse_retry_after",
]

_log = logging.getLogger(__name__)

#: (status, parsed body or raw text) -> an error class, or None to use the common mapping
Classifier = Callable[[int, Any], type[ProviderError] | None]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def error_text(body: Any) -> str:
    """The most useful human text in a vendor error body, whatever its envelope."""
    if isinstance(body, dict):
        for key in ("message", "error_description", "detail", "reason"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
        err = body.get("error")
        if isinstance(err, dict):
            return error_text(err)
        if isinstance(err, str) and err:
            return err
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            return error_text(errors[0])
    if isinstance(body, str):
        return body.strip()[:200] or "empty body"
    return "no details"


def error_for_status(status: int) -> type[ProviderError]:
    """The common meaning of an HTTP error status."""
    if status in (401, 403):
        return AuthError
    if status == 402:
        return OutOfFundsError
    if status == 404:
        return UnknownJobError
    if status in (408, 409, 425, 429) or status >= 500:
        return RetryableError
    if status == 451:
        return ContentBlockedError
    return RejectedInputError


#: bodies larger than this are decoded off the event loop (inline base64 images run to megabytes)
_LARGE_BODY = 256 * 1024


def classify_error(status: int, body: Any, classify: Classifier | None = None) -> type[ProviderError]:
    """The error class for a refused call: the vendor's `classify` hook first, then the
    common meaning of the status. Also for error codes a vendor puts inside a 2xx body."""
    return (classify(status, body) if classify else None) or error_for_status(status)


@dataclass(slots=True)
class VendorHTTP:
    """A vendor's base URL and auth headers over the process's one aiohttp session."""

    vendor: str
    session: aiohttp.ClientSession
    base_url: str
    # The headers carry the API key: keep them out of repr() so no log line or traceback shows it.
    headers: Mapping[str, str] = field(repr=False)
    timeout: float = 60.0

    @classmethod
    def from_settings(
        cls,
        vendor: str,
        session: aiohttp.ClientSession,
        settings: ProviderSettings,
        *,
        key_header: str | None = None,
    ) -> Self:
        """A client for `settings`: the key goes in `Authorization: Bearer …`, or bare in
        `key_header` for vendors that name their own header (Pixazo's APIM gateway)."""
        auth = (
            {key_header: settings.api_key} if key_header else {"Authorization": f"Bearer {settings.api_key}"}
        )
        return cls(
            vendor=vendor, session=session, base_url=settings.base_url, headers=auth, timeout=settings.timeout
        )

    def url(self, path: str) -> str:
        """Join the base URL and a path without doubling or dropping slashes."""
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        classify: Classifier | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return the parsed JSON of a 2xx answer, or raise a
        `ProviderError`: `RetryableError` for transport faults and malformed success bodies,
        otherwise the class `classify` (then `error_for_status`) picks for the status."""
        url = path if path.startswith(("http://", "https://")) else self.url(path)
        merged = {**self.headers, **(headers or {})}
        try:
            async with self.session.request(
                method,
                url,
                json=json_body,
                params=params,
                headers=merged,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError as exc:
            raise RetryableError(self.vendor, "request timed out") from exc
        except aiohttp.ClientError as exc:
            raise RetryableError(self.vendor, f"connection failed: {type(exc).__name__}") from exc

        body = await asyncio.to_thread(_decode, raw) if len(raw) > _LARGE_BODY else _decode(raw)
        if 200 <= status < 300:
            if body is None or isinstance(body, str):
                raise RetryableError(self.vendor, "malformed JSON in a success answer", status=status)
            return body

        cls = classify_error(status, body, classify)
        message = error_text(body)
        code = error_code(body)
        _log.warning(
            "vendor call failed vendor=%s method=%s path=%s status=%s code=%s error=%s",
            self.vendor,
            method,
            _path_only(url),
            status,
            code,
            cls.__name__,
        )
        if issubclass(cls, RetryableError):
            raise cls(self.vendor, message, status=status, code=code, retry_after=retry_after)
        raise cls(self.vendor, message, status=status, code=code)


def _decode(raw: bytes) -> Any:
    """Parsed JSON, the text itself when it is not JSON, or None for an empty body."""
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def error_code(body: Any) -> str | None:
    """The vendor's symbolic error code, from a flat `{code | reason}` body or the first of a
    nested `error` / `errors[]`; None when there is no string code."""
    if isinstance(body, dict):
        for key in ("code", "reason"):
            if isinstance(body.get(key), str):
                return body[key]
        for nested in ("error", "errors"):
            inner = body.get(nested)
            if isinstance(inner, list) and inner:
                inner = inner[0]
            if isinstance(inner, dict):
                return error_code(inner)
    return None


def decode_data_uri(value: str, *, strict: bool = True) -> tuple[bytes, str | None]:
    """Bytes and media type of a base64 `data:` URI or of bare base64. Raises ValueError
    (`binascii.Error`) when the payload is not base64; `strict=False` skips stray characters."""
    ctype = None
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise ValueError("not a base64 data URI")
        ctype = header[5:].split(";", 1)[0] or None
    return base64.b64decode(value, validate=strict), ctype


_TYPES_BY_SUFFIX = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".glb": "model/gltf-binary",
    ".obj": "model/obj",
}


def content_type_from_name(url: str) -> str | None:
    """The media type a result URL's file name implies (query string ignored), if any."""
    name = url.split("?", 1)[0].lower()
    return next((ctype for ext, ctype in _TYPES_BY_SUFFIX.items() if name.endswith(ext)), None)


def _path_only(url: str) -> str:
    # Query strings can carry tokens (webhook tokens, signed URLs): never log them.
    return url.split("?", 1)[0]
