"""Backend selection: the compiled ``vmess._speedups`` or the pure-Python twin ``vmess._core_py``.

Only this module knows that two backends exist; everything else imports the core from here. Set
``VMESS_NO_EXTENSIONS=1`` (any non-empty value other than ``0``) to force the pure backend. ``BACKEND`` is
``"native"`` or ``"pure"``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

NO_EXTENSIONS: bool = os.environ.get("VMESS_NO_EXTENSIONS", "") not in ("", "0")

if TYPE_CHECKING or NO_EXTENSIONS:  # type checkers see the twin's API (the .pyi stub mirrors it)
    from ._core_py import (  # noqa: F401
        fnv1a32,
        ShakeStream,
        kdf,
        kdf16,
        cmd_key,
        alter_ids,
        chacha_key,
        UserKeys,
        create_auth_id,
        open_auth_id,
        seal_aead_header,
        open_aead_header_length,
        open_aead_header,
        legacy_auth,
        legacy_iv,
        seal_legacy_header,
        legacy_header_decryptor,
        response_keys,
        seal_aead_response,
        open_aead_response_length,
        open_aead_response,
        cfb_encryptor,
        cfb_decryptor,
        ChunkWriter,
        ChunkReader,
    )

    BACKEND = "pure"
else:
    try:
        from ._speedups import (  # type: ignore[no-redef]  # noqa: F401
            fnv1a32,
            ShakeStream,
            kdf,
            kdf16,
            cmd_key,
            alter_ids,
            chacha_key,
            UserKeys,
            create_auth_id,
            open_auth_id,
            seal_aead_header,
            open_aead_header_length,
            open_aead_header,
            legacy_auth,
            legacy_iv,
            seal_legacy_header,
            legacy_header_decryptor,
            response_keys,
            seal_aead_response,
            open_aead_response_length,
            open_aead_response,
            cfb_encryptor,
            cfb_decryptor,
            ChunkWriter,
            ChunkReader,
        )
    except ImportError:  # the extension was not built (no compiler, or skipped at install time)
        from ._core_py import (  # noqa: F401
            fnv1a32,
            ShakeStream,
            kdf,
            kdf16,
            cmd_key,
            alter_ids,
            chacha_key,
            UserKeys,
            create_auth_id,
            open_auth_id,
            seal_aead_header,
            open_aead_header_length,
            open_aead_header,
            legacy_auth,
            legacy_iv,
            seal_legacy_header,
            legacy_header_decryptor,
            response_keys,
            seal_aead_response,
            open_aead_response_length,
            open_aead_response,
            cfb_encryptor,
            cfb_decryptor,
            ChunkWriter,
            ChunkReader,
        )

        BACKEND = "pure"
    else:
        BACKEND = "native"

__all__ = ["BACKEND", "NO_EXTENSIONS", "fnv1a32", "ShakeStream", "kdf", "kdf16", "cmd_key", "alter_ids", "chacha_key", "UserKeys", "create_auth_id", "open_auth_id", "seal_aead_header", "open_aead_header_length", "open_aead_header", "legacy_auth", "legacy_iv", "seal_legacy_header", "legacy_header_decryptor", "response_keys", "seal_aead_response", "open_aead_response_length", "open_aead_response", "cfb_encryptor", "cfb_decryptor", "ChunkWriter", "ChunkReader"]
