"""``fairunlock audit integrate|export|verify|public-key``.

Every command reads Settings.from_env(); bad input or configuration is one line on stderr and
exit 2, a failure of the database or of the log's integrity exit 1 — never a traceback.
``verify`` is audit.verify.main, which needs nothing but the standard library and `cryptography`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service.settings import Settings, SettingsError

USAGE_ERROR = 2
FAILURE = 1


def register(groups: Any) -> None:
    audit = groups.add_parser("audit", help="the tamper-evident audit log")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    integrate = commands.add_parser(
        "integrate", help="give queued entries their indices and sign checkpoints"
    )
    integrate.add_argument(
        "--once", action="store_true", help="integrate what is queued now, then exit"
    )
    integrate.add_argument(
        "--batch-size", type=_positive, default=None, help="entries per batch (one checkpoint each)"
    )
    integrate.set_defaults(handler=_integrate)

    export = commands.add_parser("export", help="write a signed export bundle")
    export.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    export.add_argument(
        "--from", dest="start", type=_non_negative, default=0, help="first index (default 0)"
    )
    export.add_argument(
        "--to",
        dest="end",
        type=_non_negative,
        default=None,
        help="end index, exclusive (default all)",
    )
    export.add_argument("--purpose", default=None, help="why this export is made (recorded)")
    export.add_argument(
        "--actor", default=None, help="who exports (recorded; default operator:<login name>)"
    )
    export.set_defaults(handler=_export)

    verify = commands.add_parser("verify", help="verify a bundle offline")
    verify.add_argument("bundle", help="the export directory")
    verify.add_argument("--key", required=True, help="the log's public key (PEM)")
    verify.add_argument("--previous", default=None, help="a checkpoint held from before")
    verify.add_argument("--full-parse", action="store_true", help="also parse every line as JSON")
    verify.set_defaults(handler=_verify)

    rebuild = commands.add_parser(
        "rebuild-subtrees",
        help="recompute the stored subtree roots from the leaf hashes (after a proof logged one "
        "as wrong)",
    )
    rebuild.set_defaults(handler=_rebuild_subtrees)

    public_key = commands.add_parser("public-key", help="print the checkpoint public key (PEM)")
    public_key.add_argument(
        "--vkey", action="store_true", help="print the C2SP verifier-key string instead"
    )
    public_key.set_defaults(handler=_public_key)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _fail(code: int, message: str) -> int:
    print(f"fairunlock audit: {message}", file=sys.stderr)
    return code


def _run(body: Callable[[Settings], Coroutine[Any, Any, int]]) -> int:
    """Load settings, run the command, turn expected failures into messages and exit codes."""
    from audit.bundle import BundleError
    from audit.export import ExportRangeError
    from audit.store import AuditStoreError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(USAGE_ERROR, str(exc))
    try:
        return asyncio.run(body(settings))
    except SettingsError as exc:  # includes KeyStoreError
        return _fail(USAGE_ERROR, str(exc))
    except (ExportRangeError, BundleError, FileExistsError) as exc:
        return _fail(USAGE_ERROR, str(exc))
    except AuditStoreError as exc:
        return _fail(FAILURE, f"the audit log is inconsistent: {exc}")
    except SQLAlchemyError as exc:
        return _fail(FAILURE, f"database error: {type(exc).__name__}: {exc}".splitlines()[0])
    except OSError as exc:
        return _fail(FAILURE, f"{exc}")


async def _prepare(settings: Settings) -> tuple[Any, Any]:
    """Engine and key store; development migrates the database first, as the app does."""
    from service.db import create_engine
    from service.keystore import KeyStore
    from service.schema import upgrade

    keystore = KeyStore.load(settings)
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.is_production:
        # Production runs `fairunlock db upgrade` as a deliberate step.
        await asyncio.to_thread(upgrade, settings.resolved_database_url)
    return create_engine(settings.resolved_database_url), keystore


def _integrate(args: argparse.Namespace) -> int:
    from audit.integrator import integrate_all, run
    from audit.store import AuditStore

    async def body(settings: Settings) -> int:
        engine, keystore = await _prepare(settings)
        signer = keystore.signer(settings.audit_origin)
        batch = args.batch_size or settings.audit_batch_size
        try:
            if args.once:
                count = await integrate_all(engine, signer, settings.audit_origin, batch)
                async with engine.connect() as conn:
                    size = await AuditStore(conn).check_contiguity()
                print(f"integrated {count} entries; log size {size}")
                return 0
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await run(
                engine,
                signer,
                settings.audit_origin,
                stop,
                batch_size=batch,
                interval=settings.audit_interval_ms / 1000,
            )
            return 0
        finally:
            await engine.dispose()

    return _run(body)


def _rebuild_subtrees(args: argparse.Namespace) -> int:
    from audit.integrator import rebuild_subtrees

    async def body(settings: Settings) -> int:
        engine, _ = await _prepare(settings)
        try:
            count = await rebuild_subtrees(engine)
        finally:
            await engine.dispose()
        print(f"stored {count} subtree roots, recomputed from the leaf hashes")
        return 0

    return _run(body)


def _export(args: argparse.Namespace) -> int:
    from audit.export import export_bundle

    async def body(settings: Settings) -> int:
        engine, keystore = await _prepare(settings)
        try:
            result = await export_bundle(
                engine,
                args.out,
                signer=keystore.signer(settings.audit_origin),
                origin=settings.audit_origin,
                actor=args.actor or f"operator:{getpass.getuser()}",
                start=args.start,
                end=args.end,
                purpose=args.purpose,
            )
        finally:
            await engine.dispose()
        manifest = result.manifest
        print(
            f"exported entries [{manifest.start}, {manifest.end}) of {manifest.origin} to "
            f"{args.out}; key id {manifest.key_id}"
        )
        return 0

    return _run(body)


def _verify(args: argparse.Namespace) -> int:
    from audit.verify import main as verify_main

    argv = [args.bundle, "--key", args.key]
    if args.previous is not None:
        argv += ["--previous", args.previous]
    if args.full_parse:
        argv.append("--full-parse")
    return verify_main(argv)


def _public_key(args: argparse.Namespace) -> int:
    from service.keystore import KeyStore

    try:
        settings = Settings.from_env()
        keystore = KeyStore.load(settings)
    except SettingsError as exc:
        return _fail(USAGE_ERROR, str(exc))
    if args.vkey:
        print(keystore.signer(settings.audit_origin).verifier_key())
    else:
        sys.stdout.write(keystore.public_key_pem().decode("ascii"))
    return 0
