"""Who may call a service: the suite secret, service identities, API-key hashes and TLS.

The security model, in one place:

* **The suite secret** (32 random bytes) is what every service of one deployment shares. It
  comes from ``HFTGATE_SUITE_SECRET`` (any string of 32+ characters), else the file named by
  ``HFTGATE_SUITE_SECRET_FILE``, else ``<state dir>/secrets/suite.secret``, which is created
  (mode 0600) on first use. Everything else is derived from it with HMAC-SHA256 under a
  distinct label, so one secret to provision, and none of the derived values reveals it.
* **Service identities.** A call between services carries ``x-hftgate-service-token:
  <principal>.<hex HMAC(secret, principal)>``. The principal is a service name (``execution``,
  ``cache``, ``marketdata``, ``gateway``, ``scaler``), ``feed`` (a market data publisher such
  as ``hftgate replay``) or ``admin`` (the admin CLI). A token cannot be forged without the
  secret, and a token for one principal says nothing about another's.
* **Accounts** authenticate with ``x-api-key``. Keys are stored only as
  ``HMAC(secret, key)`` (:meth:`SuiteSecret.api_key_hash`), so a leaked key row is useless
  without the secret; the hash costs ~1 us and is cached per key, so the order path does not
  pay for it per call.
* **TLS.** ``HFTGATE_TLS_DIR`` names a folder made by ``hftgate certs init`` (a suite CA and
  one certificate per service). With it every server serves TLS and every channel between
  services verifies the peer against the suite CA and presents its own certificate (mutual
  TLS when ``HFTGATE_TLS_REQUIRE_CLIENT_CERT`` is on). Without it, channels are plaintext,
  which is fine on loopback and on a private compose network, not across hosts.

Servers install :class:`ServiceAuthInterceptor` (through ``create_server(auth=...)``); it
refuses a call with no valid credential before its request is even decoded, and costs a
dict lookup on the way through. Servicers then ask :func:`principal_of` who is calling.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hftgate.config import default_state_dir

log = logging.getLogger(__name__)

SERVICE_TOKEN_METADATA = "x-hftgate-service-token"
API_KEY_METADATA = "x-api-key"
#: The account a call acts for, set by the gateway after it checked the account's API key
#: (percent-encoded UTF-8). A shard trusts it only on a call with the "gateway" principal's token.
ACCOUNT_METADATA = "x-hftgate-account"

#: Principals that are services of the suite (or its operators), never accounts.
ADMIN = "admin"
SERVICE_PRINCIPALS: frozenset[str] = frozenset(
    {ADMIN, "execution", "marketdata", "cache", "gateway", "scaler", "feed"}
)

#: Methods any caller may use without a credential: balancers and orchestrators probe health,
#: and reflection only describes the API.
OPEN_METHOD_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

MIN_SECRET_BYTES = 32
_MAX_TOKEN_CHARS = 256
_MAX_CACHED_TOKENS = 1_024
_LABEL_SERVICE = b"hftgate/v1/service-token/"
_LABEL_API_KEY = b"hftgate/v1/api-key/"
_LABEL_REDIS = b"hftgate/v1/redis-password"

PROFILE_VARIABLE = "HFTGATE_PROFILE"
DEV_PROFILE = "dev"
PRODUCTION_PROFILE = "production"


class SecurityError(RuntimeError):
    """The suite's credentials cannot be read or made."""


def profile(environ: Mapping[str, str] | None = None) -> str:
    """``dev`` (``hftgate up``, ``make run``: demo accounts allowed) or ``production`` (the image's
    default, so compose and Kubernetes never seed demo keys)."""
    env = os.environ if environ is None else environ
    value = env.get(PROFILE_VARIABLE, DEV_PROFILE).strip().lower() or DEV_PROFILE
    if value not in (DEV_PROFILE, PRODUCTION_PROFILE):
        raise SecurityError(f"{PROFILE_VARIABLE}={value!r}: expected {DEV_PROFILE} or {PRODUCTION_PROFILE}")
    return value


class SuiteSecret:
    """The deployment's shared secret and what is derived from it."""

    def __init__(self, raw: bytes, source: str = "given") -> None:
        if len(raw) < MIN_SECRET_BYTES:
            raise SecurityError(f"the suite secret must be at least {MIN_SECRET_BYTES} bytes ({source})")
        self._raw = raw
        self.source = source
        # Verified tokens -> principal; bounded, since a hostile caller controls what it sends.
        self._verified: dict[str, str] = {}
        self._api_key_hashes: dict[str, str] = {}

    def __repr__(self) -> str:  # never show the secret in a log or a traceback
        return f"SuiteSecret(source={self.source!r})"

    def _mac(self, label: bytes, message: str) -> str:
        return hmac.new(self._raw, label + message.encode("utf-8"), hashlib.sha256).hexdigest()

    # --- service identities -------------------------------------------------------------
    def token_for(self, principal: str) -> str:
        """The bearer token of ``principal`` (a service name or ``admin``)."""
        if not principal or "." in principal or len(principal) > 64:
            raise ValueError(f"bad principal name {principal!r}")
        return f"{principal}.{self._mac(_LABEL_SERVICE, principal)}"

    def verify_token(self, token: str) -> str | None:
        """The principal ``token`` proves, or None when it proves nothing."""
        known = self._verified.get(token)
        if known is not None:
            return known
        if len(token) > _MAX_TOKEN_CHARS:
            return None
        principal, dot, mac = token.rpartition(".")
        if not dot or not principal or len(principal) > 64:
            return None
        if not hmac.compare_digest(
            mac.encode("ascii", "replace"), self._mac(_LABEL_SERVICE, principal).encode()
        ):
            return None
        if len(self._verified) >= _MAX_CACHED_TOKENS:
            self._verified.clear()
        self._verified[token] = principal
        return principal

    # --- account keys -------------------------------------------------------------------
    def api_key_hash(self, api_key: str) -> str:
        """The stored form of an API key: hex HMAC-SHA256 under the suite secret."""
        known = self._api_key_hashes.get(api_key)
        if known is not None:
            return known
        digest = self._mac(_LABEL_API_KEY, api_key)
        if len(self._api_key_hashes) >= 4_096:
            self._api_key_hashes.clear()
        self._api_key_hashes[api_key] = digest
        return digest

    # --- other derived secrets ------------------------------------------------------------
    def redis_password(self) -> str:
        """The embedded Redis server's password."""
        return self._mac(_LABEL_REDIS, "")

    def service_credentials(self, principal: str, tls: ClientTls | None = None) -> ClientCredentials:
        """What a process calling other services as ``principal`` sends."""
        return ClientCredentials(metadata=((SERVICE_TOKEN_METADATA, self.token_for(principal)),), tls=tls)


def secret_file(state_dir: Path | None = None) -> Path:
    """Where the suite secret is kept when no variable names it."""
    return (state_dir or default_state_dir()) / "secrets" / "suite.secret"


def load_suite_secret(
    environ: Mapping[str, str] | None = None, *, state_dir: Path | None = None, create: bool = True
) -> SuiteSecret:
    """The suite secret from the environment or its file (see the module docstring)."""
    env = os.environ if environ is None else environ
    value = env.get("HFTGATE_SUITE_SECRET", "")
    if value:
        return SuiteSecret(value.encode("utf-8"), "HFTGATE_SUITE_SECRET")
    named = env.get("HFTGATE_SUITE_SECRET_FILE", "")
    path = Path(named) if named else secret_file(state_dir)
    try:
        return SuiteSecret(path.read_bytes().strip(), str(path))
    except FileNotFoundError:
        if named or not create:
            raise SecurityError(f"no suite secret at {path}") from None
        if profile(env) == PRODUCTION_PROFILE:
            # A container that made its own secret would refuse every other service's calls (and
            # they its): in production the secret is provisioned, never invented.
            raise SecurityError(
                f"no suite secret: set HFTGATE_SUITE_SECRET or HFTGATE_SUITE_SECRET_FILE (looked at {path})"
            ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    raw = secrets.token_hex(32).encode("ascii")
    try:
        # O_EXCL: two services starting at once must agree on one secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        return SuiteSecret(path.read_bytes().strip(), str(path))
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
        out.flush()
        os.fsync(out.fileno())
    log.info("suite secret created at %s", path)
    return SuiteSecret(raw, str(path))


# --- TLS --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and, for mutual TLS, the CA its clients' certificates must chain to."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None = None
    require_client_cert: bool = False

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca_path.read_bytes() if self.client_ca_path else None
        return grpc.ssl_server_credentials(
            [(self.key_path.read_bytes(), self.cert_path.read_bytes())],
            root_certificates=ca,
            require_client_auth=self.require_client_cert and ca is not None,
        )


@dataclass(frozen=True)
class ClientTls:
    """How a channel verifies its server (the suite CA) and, optionally, proves itself (a certificate)."""

    ca_path: Path
    cert_path: Path | None = None
    key_path: Path | None = None
    #: The name the server's certificate must carry, when the address is not it (e.g. an IP).
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_path.read_bytes(),
            private_key=self.key_path.read_bytes() if self.key_path else None,
            certificate_chain=self.cert_path.read_bytes() if self.cert_path else None,
        )


@dataclass(frozen=True)
class ClientCredentials:
    """What a client sends: metadata on every call (a service token or an API key) and TLS, if any."""

    metadata: tuple[tuple[str, str], ...] = ()
    tls: ClientTls | None = None

    def open_channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to ``target``: TLS when configured, else plaintext."""
        if self.tls is None:
            return grpc.aio.insecure_channel(target, options=list(options))
        opts = list(options)
        if self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(target, self.tls.credentials(), options=opts)

    def open_sync_channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """The same, as a blocking channel (CLI tools)."""
        if self.tls is None:
            return grpc.insecure_channel(target, options=list(options))
        opts = list(options)
        if self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.secure_channel(target, self.tls.credentials(), options=opts)


def tls_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if environ is None else environ
    value = env.get("HFTGATE_TLS_DIR", "")
    return Path(value) if value else None


def suite_server_tls(service: str, environ: Mapping[str, str] | None = None) -> ServerTls | None:
    """The server TLS of ``service`` from ``HFTGATE_TLS_DIR`` (None: plaintext)."""
    env = os.environ if environ is None else environ
    folder = tls_dir(env)
    if folder is None:
        return None
    require = env.get("HFTGATE_TLS_REQUIRE_CLIENT_CERT", "").strip().lower() in ("1", "true", "yes", "on")
    return ServerTls(
        cert_path=folder / f"{service}.pem",
        key_path=folder / f"{service}-key.pem",
        client_ca_path=folder / "ca.pem",
        require_client_cert=require,
    )


def suite_client_tls(principal: str, environ: Mapping[str, str] | None = None) -> ClientTls | None:
    """The client TLS of ``principal`` from ``HFTGATE_TLS_DIR`` (None: plaintext)."""
    folder = tls_dir(environ)
    if folder is None:
        return None
    cert = folder / f"{principal}.pem"
    key = folder / f"{principal}-key.pem"
    has_cert = cert.exists() and key.exists()
    return ClientTls(
        ca_path=folder / "ca.pem", cert_path=cert if has_cert else None, key_path=key if has_cert else None
    )


@dataclass
class SuiteSecurity:
    """Everything one process needs to authenticate its callers and itself."""

    secret: SuiteSecret
    #: This process's own identity when it calls other services.
    principal: str
    server_tls: ServerTls | None = None
    client_tls: ClientTls | None = None
    _credentials: ClientCredentials | None = field(default=None, repr=False)

    @property
    def credentials(self) -> ClientCredentials:
        """This process's credentials for calls to other services of the suite."""
        if self._credentials is None:
            self._credentials = self.secret.service_credentials(self.principal, self.client_tls)
        return self._credentials

    def interceptor(self, *, api_key_methods: Iterable[str] | bool = ()) -> ServiceAuthInterceptor:
        return ServiceAuthInterceptor(self.secret, api_key_methods=api_key_methods)


def load_suite_security(
    principal: str, environ: Mapping[str, str] | None = None, *, state_dir: Path | None = None
) -> SuiteSecurity:
    """The suite security of a process that runs as ``principal``, from the environment."""
    env = os.environ if environ is None else environ
    return SuiteSecurity(
        secret=load_suite_secret(env, state_dir=state_dir),
        principal=principal,
        server_tls=suite_server_tls(principal, env),
        client_tls=suite_client_tls(principal, env),
    )


# --- the server side ------------------------------------------------------------------------
def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


class ServiceAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call that carries neither a valid service token nor, where the method allows
    one, an API key (which the servicer then checks: only it knows the accounts).

    A refused call gets UNAUTHENTICATED before its request is decoded; a call with a token that
    does not verify is refused even if it also has an API key (a forged credential is never
    "no credential"). An admitted call's handler is returned unwrapped: no per-call cost beyond
    the metadata scan and a dict lookup.
    """

    def __init__(self, secret: SuiteSecret, *, api_key_methods: Iterable[str] | bool = ()) -> None:
        self.secret = secret
        self._all_api_key = api_key_methods is True
        self._api_key_methods = frozenset(() if isinstance(api_key_methods, bool) else api_key_methods)
        self.refused = 0

    def _allows_api_key(self, method: str) -> bool:
        return self._all_api_key or method in self._api_key_methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        token = api_key = None
        tokens = keys = 0
        for name, value in handler_call_details.invocation_metadata or ():
            if name == SERVICE_TOKEN_METADATA:
                token = value
                tokens += 1
            elif name == API_KEY_METADATA:
                api_key = value
                keys += 1
        if tokens > 1 or keys > 1:
            # Which of two credentials counts would depend on who reads the metadata: refuse both.
            return await self._refuse(
                continuation, handler_call_details, "send one credential of each kind at most"
            )
        if token is not None:
            if isinstance(token, str) and self.secret.verify_token(token) is not None:
                return await continuation(handler_call_details)
            return await self._refuse(continuation, handler_call_details, "the service token is not valid")
        if api_key is not None and self._allows_api_key(method):
            return await continuation(handler_call_details)
        wanted = (
            "an API key (x-api-key) or a service token" if self._allows_api_key(method) else "a service token"
        )
        return await self._refuse(continuation, handler_call_details, f"{method} needs {wanted}")

    async def _refuse(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
        message: str,
    ) -> grpc.RpcMethodHandler:
        self.refused += 1
        handler = await continuation(details)
        return refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, message)


def refusing_handler(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers ``code`` without reading the request."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


def principal_of(context: grpc.aio.ServicerContext, secret: SuiteSecret) -> str | None:
    """The service principal a call proved with its token, or None (an API-key caller, or none)."""
    token = metadata_value(context, SERVICE_TOKEN_METADATA)
    return None if token is None else secret.verify_token(token)


def api_key_of(context: grpc.aio.ServicerContext) -> str | None:
    return metadata_value(context, API_KEY_METADATA)


# --- certificates -----------------------------------------------------------------------------
DEFAULT_CERT_NAMES: tuple[str, ...] = (
    "cache",
    "marketdata",
    "execution",
    "gateway",
    "scaler",
    ADMIN,
    "feed",
)


def certs_init(
    folder: Path,
    names: Sequence[str] = DEFAULT_CERT_NAMES,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    valid_days: int = 825,
    overwrite: bool = False,
) -> list[Path]:
    """Make a suite CA and one certificate per name (server and client use) under ``folder``.

    Each certificate's subject alternative names are the name itself (a compose or Kubernetes
    service host) and ``hosts``. Keys are ECDSA P-256, written mode 0600. Returns the files
    written; an existing CA is kept unless ``overwrite``.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    written: list[Path] = []
    now = datetime.datetime.now(datetime.UTC)

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        written.append(path)

    ca_cert_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    if ca_cert_path.exists() and ca_key_path.exists() and not overwrite:
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hftgate suite CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        write_key(ca_key_path, ca_key)  # type: ignore[arg-type]
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        written.append(ca_cert_path)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = [x509.DNSName(name)]
        for host in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        write_key(folder / f"{name}-key.pem", key)
        cert_path = folder / f"{name}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        written.append(cert_path)
    return written
