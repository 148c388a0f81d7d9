"""Request body limits, enforced while the body streams in (a client that lies in or omits
Content-Length is cut off at the limit too), answered with 413."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.api.errors import Style, shaped_error, style_for


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        default_limit: int,
        upload_limit: int,
        upload_prefix: str | tuple[str, ...],
    ) -> None:
        self.app, self.default_limit, self.upload_limit, self.upload_prefix = (
            app,
            default_limit,
            upload_limit,
            upload_prefix,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = (
            self.upload_limit
            if scope["path"].startswith(self.upload_prefix)
            else self.default_limit
        )
        style = style_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit, style)
            return
        seen = 0
        rejected = False

        async def counting_receive() -> Message:
            # Over the limit mid-stream: answer 413 ourselves and tell the app the client left.
            # (Raising here would be caught by the framework's body parser and turned into a 400.)
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    rejected = True
                    await self._reject(send, limit, style)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:  # the app's own answer after a 413 is dropped
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    @staticmethod
    async def _reject(send: Send, limit: int, style: Style) -> None:
        _, error = shaped_error(
            style,
            413,
            "payload_too_large",
            f"request body is over the limit of {limit} bytes",
            {"limit_bytes": limit},
        )
        body = json.dumps(error).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
