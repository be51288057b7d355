"""The one place where vendor HTTP answers become provider errors.

Every client sends its requests through `VendorHTTP.request_json`; it maps transport faults,
HTTP statuses and malformed bodies to the taxonomy in `providers.base`. A vendor whose error
codes differ from the common meaning (AI/ML API's 403 out-of-credits, Novita's 400/403 balance
errors) passes a `classify` hook that sees the status and parsed body first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from providers.base import (
    AuthError,
    ContentBlockedError,
    OutOfFundsError,
    ProviderError,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)

__all__ = ["Classifier", "VendorHTTP", "error_for_status", "error_text", "parse_retry_after"]

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
        import datetime as _dt

        when = parsedate_to_datetime(value)
        return max(0.0, (when - _dt.datetime.now(_dt.UTC)).total_seconds())
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


@dataclass(slots=True)
class VendorHTTP:
    """A vendor's base URL and auth headers over the process's one aiohttp session."""

    vendor: str
    session: aiohttp.ClientSession
    base_url: str
    headers: Mapping[str, str]
    timeout: float = 60.0

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
        """Send one request and return the parsed JSON of a 2xx answer, or raise."""
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
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientError as exc:
            raise RetryableError(self.vendor, f"connection failed: {type(exc).__name__}") from exc

        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text) if text.strip() else None
        except ValueError:
            body = text
        if 200 <= status < 300:
            if body is None or isinstance(body, str):
                raise RetryableError(self.vendor, "malformed JSON in a success answer", status=status)
            return body

        cls = (classify(status, body) if classify else None) or error_for_status(status)
        message = error_text(body)
        code = _error_code(body)
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


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("code", "reason"):
            if isinstance(body.get(key), str):
                return body[key]
        for nested in ("error", "errors"):
            inner = body.get(nested)
            if isinstance(inner, list) and inner:
                inner = inner[0]
            if isinstance(inner, dict):
                return _error_code(inner)
    return None


def _path_only(url: str) -> str:
    # Query strings can carry tokens (webhook tokens, signed URLs): never log them.
    return url.split("?", 1)[0]
