"""Reading a multipart upload: one ``file`` and a few text fields, within their limits."""

from __future__ import annotations

import msgspec
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from engine.errors import FileTooLarge, ValidationFailed


class Upload(msgspec.Struct, frozen=True, kw_only=True):
    """The uploaded file, read whole, and the form's text fields."""

    data: bytes
    file_name: str | None
    mime: str | None
    fields: dict[str, str]


async def read_upload(request: Request, *, max_file_bytes: int, max_fields: int) -> Upload:
    """The multipart form's ``file`` and its text fields (at most ``max_fields`` of them).
    A file over ``max_file_bytes`` is ``upload.file_too_large``, and so is a body over
    the route's limit: a declared one is refused before routing (api.bodylimit), a chunked
    one here, when Starlette's count passes the route's ``max_body_size`` (its 413)."""
    try:
        async with request.form(max_files=1, max_fields=max_fields) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ValidationFailed(
                    "A file is required in the multipart field named file.",
                    errors={"file": ["required"]},
                )
            data = await upload.read(max_file_bytes + 1)
            fields = {name: value for name, value in form.items() if isinstance(value, str)}
            file_name, mime = upload.filename, upload.content_type
    except HTTPException as exc:
        if exc.status_code == 413:
            raise FileTooLarge() from None
        raise
    if len(data) > max_file_bytes:
        raise FileTooLarge(f"The file may be at most {max_file_bytes} bytes.")
    return Upload(data=data, file_name=file_name, mime=mime, fields=fields)
