"""Connecting a sweep's driver to Ray, in bounded time, with one line when it cannot (docs/cluster.md).

``ray.init(address=HOST:PORT)`` with nothing at that address retries for minutes, printing only Ray's
own log lines; a head that refuses this process's auth token is reported as "Failed to connect".
:func:`connect` therefore

1. checks that something accepts a TCP connection at the address Ray will use (Ray resolves
   ``127.0.0.1`` to the machine's own interface address) within :data:`CONNECT_TIMEOUT_S`;
2. gives Ray :data:`GCS_ATTEMPTS` attempts to talk to it (Ray's own knob,
   ``RAY_gcs_server_port_wait_time_s``; a value the user set is kept), so a port held by something
   that is not a Ray head fails in about two minutes and a refused token in seconds;
3. turns a refusal into one line: a missing or wrong auth token says how to get the cluster's.
"""
from __future__ import annotations

import contextlib
import os
import socket

from ..errors import PrealignError

CONNECT_TIMEOUT_S = 10.0  # seconds a TCP connection to the head may take
GCS_ATTEMPTS = 3          # Ray's attempts to reach the head's GCS once the port answers (~1 s each; ~40 s when no GCS)
_GCS_WAIT = "RAY_gcs_server_port_wait_time_s"

TOKEN_FIX = ("copy the cluster's token (`ray get-auth-token` on the head prints it) to ~/.ray/auth_token here, or "
             "point RAY_AUTH_TOKEN_PATH at a file holding it, and set RAY_AUTH_MODE=token (docs/cluster.md)")


def connect(address: str | None, runtime_env: dict | None = None):
    """``(ray, started)``: the ray module, connected to ``address`` (None: a new local instance) unless
    this process is connected already; ``started`` = this call connected, with ``runtime_env`` as the
    job's (Ray uploads a local ``working_dir`` only for a whole job). Raises :class:`PrealignError`
    (one line naming the address) when nothing answers there, the head refuses this process's token,
    or Ray cannot connect for another reason."""
    try:
        import ray
    except ImportError as exc:
        raise PrealignError("the Ray executor needs the 'ray' package; install it with "
                            "`pip install ray` or use --executor local") from exc
    if ray.is_initialized():
        return ray, False
    existing = address and _target(address) is not None  # a running cluster's address (not "local")
    if existing:
        reachable(address)
    kwargs = {"include_dashboard": False, "log_to_driver": False}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    try:
        if existing:  # connect only: the bound must not shorten a new local head's own start-up wait
            with _bounded_gcs_wait():
                ray.init(address=address, **kwargs)
        elif address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
    except Exception as err:  # noqa: BLE001 - refused token, no GCS at the port, version mismatch
        raise PrealignError(refusal(address, err)) from None
    return ray, True


def reachable(address: str) -> None:
    """One line (:class:`PrealignError`) unless something accepts a TCP connection at ``address``
    (``HOST:PORT``, ``ray://HOST:PORT``, or ``auto``: the cluster Ray finds) within
    :data:`CONNECT_TIMEOUT_S`."""
    target = _target(address)
    if target is None:  # "auto" with no cluster recorded here: ray.init says so at once
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as err:
        why = (f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(err, TimeoutError)
               else (err.strerror or type(err).__name__).lower())
        via = "" if f"{host}:{port}" in address else f"Ray connects to {host}:{port}: "
        raise PrealignError(f"no Ray head at {address} ({via}{why}); start one there with `ray start --head --port "
                            f"{port}` or pass the address it printed (docs/cluster.md)") from None


def _target(address: str) -> tuple[str, int] | None:
    """``(host, port)`` that Ray will connect to for ``address``, or None where Ray finds no address."""
    if address.startswith("ray://"):  # Ray Client: connects to exactly this host and port
        host, _, port = address[len("ray://"):].rpartition(":")
        return (host.strip("[]"), int(port)) if port.isdigit() else None
    try:  # Ray's own resolution (127.0.0.1 -> this machine's interface address; auto -> the recorded cluster)
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - a malformed address: ray.init names it
        return None
    if not resolved:
        return None
    host, _, port = resolved.rpartition(":")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def _bounded_gcs_wait():
    """Within the block, Ray makes :data:`GCS_ATTEMPTS` attempts to reach a head's GCS (instead of 20);
    kept as it is when the user set ``RAY_gcs_server_port_wait_time_s``."""
    if _GCS_WAIT in os.environ:
        yield
        return
    os.environ[_GCS_WAIT] = str(GCS_ATTEMPTS)
    try:
        yield
    finally:
        os.environ.pop(_GCS_WAIT, None)


def refusal(address: str | None, err: BaseException) -> str:
    """The one line for a failed ``ray.init``: a refused or missing auth token (anywhere in the
    exception's chain; Ray wraps it in ConnectionError) with its fix, else Ray's first line."""
    where = repr(address) if address else "a new local instance"
    texts, seen, e = [], set(), err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    chain = "\n".join(texts)
    if "no authentication token was found" in chain:
        return f"the Ray cluster at {where} needs an auth token and this machine has none; {TOKEN_FIX}"
    if "InvalidAuthToken" in chain or "AuthenticationError" in chain:
        return (f"the Ray cluster at {where} refused this process's auth token (InvalidAuthToken: none sent, or "
                f"not the cluster's); {TOKEN_FIX}")
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if address:
        return (f"cannot connect to the Ray cluster at {where} ({first}); something answers there but Ray could not "
                f"reach a head in {GCS_ATTEMPTS} attempts: check the address `ray start --head` printed and that "
                f"head's and this machine's Ray versions; {_GCS_WAIT}=N lets Ray try N times (docs/cluster.md)")
    return f"cannot start a local Ray instance ({first}); see docs/cluster.md"
