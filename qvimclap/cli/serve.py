"""``qvimclap serve``: the web page and JSON API over loaded indexes (and AudioLDM), on this machine."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.errors import QvimclapError, printable


@app.command()
@user_errors
def serve(
    index: list[Path] = typer.Option(
        ..., "--index", "-i", help="Index file written by `qvimclap index`; repeat for several."
    ),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Query encoder (an aligned model folder); default: each index's recorded encoder. "
        "Also the condition model of generation.",
    ),
    audioldm: str = typer.Option(
        None, "--audioldm", help="A diffusers AudioLDM folder: enables 'generate from this imitation'."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (default: this machine only)."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port (0 picks a free one)."),
    token: str = typer.Option(
        None,
        "--token",
        envvar="QVIMCLAP_SERVE_TOKEN",
        help="Secret the API requires (Authorization: Bearer TOKEN); required with a non-loopback --host.",
    ),
    work_dir: Path = typer.Option(
        None, "--work-dir", help="Where uploads are held while read (default: a temporary folder, removed)."
    ),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest upload accepted."),
    max_duration: float = typer.Option(30.0, "--max-duration", help="Longest upload accepted, in seconds."),
) -> None:
    """Serve a web page to hum into and hear what your library holds (and what AudioLDM makes of it)."""
    from qvimclap.serve import Limits, create_app, is_loopback, load_state
    from qvimclap.serve.server import bind, serve_forever, url_of

    # 1. Safe by default: other machines only with a token.
    if not is_loopback(host):
        if not token:
            raise QvimclapError(
                f"--host {host} lets other machines reach the server; pass --token SECRET too "
                "(clients send it as 'Authorization: Bearer SECRET'), or keep the default 127.0.0.1"
            )
        typer.echo(
            f"Warning: listening on {host}: anyone who can reach this machine and knows the token can search "
            "your library and fetch its files.",
            err=True,
        )
    if max_upload_mb <= 0 or max_duration <= 0:
        raise QvimclapError("--max-upload-mb and --max-duration must be positive")
    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), max_duration_s=max_duration)

    # 2. Bind first (a busy port fails before minutes of loading), then load everything once.
    sock = bind(host, port)
    try:
        state = load_state(
            index, model=model, audioldm=audioldm, token=token, work_dir=work_dir, limits=limits
        )
    except BaseException:
        sock.close()
        raise
    try:
        web = create_app(state)
        url = url_of(sock)
        for library in state.indexes.values():
            typer.echo(
                f"index {printable(library.name)}: {len(library.index)} sounds ({printable(library.path)})"
            )
        typer.echo(
            "generation: on" if state.generation is not None else f"generation: off ({state.generation_hint})"
        )
        typer.echo(f"uploads are held in {printable(state.uploads.path)} while they are read")
        typer.echo(f"open {url}/{f'#token={token}' if token else ''}  (API docs: {url}/docs; Ctrl-C stops)")
        # uvicorn re-raises SIGTERM once it has shut down; exit through Python so the upload folder goes too.
        signal.signal(signal.SIGTERM, _exit_quietly)
        serve_forever(web, sock)
    finally:
        state.close()
        sock.close()


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)
