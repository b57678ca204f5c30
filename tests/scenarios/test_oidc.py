"""A CI job shows an OIDC token; jit checks it against the issuer's keys and finds its pipeline."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from bot.core.policy.oidc import OidcConfig
from bot.request.http.oidc import OidcRejected, OidcVerifier, verified_context

# ------------------------------------------------------------------ keys and a local issuer

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
IMPOSTOR_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
GH_KID = "gh-rsa-1"
GL_KID = "gl-ec-1"


def public_jwk(private_key, kid: str) -> dict:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        jwk["alg"] = "RS256"
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        jwk["alg"] = "ES256"
    return {**jwk, "kid": kid, "use": "sig"}


class Issuers:
    """One loopback HTTP server playing two OIDC issuers, `/github` and `/gitlab`."""

    def __init__(self) -> None:
        self.jwks = {
            "github": [public_jwk(RSA_KEY, GH_KID)],
            "gitlab": [public_jwk(EC_KEY, GL_KID)],
        }
        self.fetches: Counter[str] = Counter()
        issuers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                name, _, rest = self.path.lstrip("/").partition("/")
                if name not in issuers.jwks:
                    return self._send(404, {})
                base = f"{issuers.base}/{name}"
                if rest == ".well-known/openid-configuration":
                    issuers.fetches[f"{name}:discovery"] += 1
                    return self._send(200, {"issuer": base, "jwks_uri": f"{base}/jwks"})
                if rest == "jwks":
                    issuers.fetches[f"{name}:jwks"] += 1
                    return self._send(200, {"keys": issuers.jwks[name]})
                return self._send(404, {})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.github = f"{self.base}/github"
        self.gitlab = f"{self.base}/gitlab"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuers():
    i = Issuers()
    yield i
    i.close()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def verifier(clock):
    return OidcVerifier(timeout=2.0, cooldown=60.0, clock=clock)


# ------------------------------------------------------------------ tokens as CI mints them


def github_claims(issuer: str, **over) -> dict:
    """The claim layout of a GitHub Actions job token (docs.github.com, OIDC reference)."""
    now = int(time.time())
    claims = {
        "jti": str(uuid.uuid4()),
        "sub": "repo:acme/deploy:environment:production",
        "aud": "jit-bot",
        "ref": "refs/heads/main",
        "sha": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
        "repository": "acme/deploy",
        "repository_id": "424242",
        "repository_owner": "acme",
        "repository_owner_id": "2020",
        "repository_visibility": "private",
        "run_id": "22259804324",
        "run_number": "42",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "actor_id": "1001",
        "workflow": "deploy",
        "workflow_ref": "acme/deploy/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
        "job_workflow_ref": "acme/deploy/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true",
        "ref_type": "branch",
        "environment": "production",
        "check_run_id": "90000001",
        "iss": issuer,
        "nbf": now - 300,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def gitlab_claims(issuer: str, **over) -> dict:
    """The claim layout of a GitLab CI `id_tokens:` token (docs.gitlab.com, ID tokens)."""
    now = int(time.time())
    claims = {
        "namespace_id": "68413579",
        "namespace_path": "acme",
        "project_id": "46573356",
        "project_path": "acme/infra",
        "project_visibility": "private",
        "user_id": "184239",
        "user_login": "alice",
        "user_email": "alice@example.com",
        "user_access_level": "maintainer",
        "user_identities": [{"provider": "saml", "extern_uid": "alice"}],
        "pipeline_id": "1519139981",
        "pipeline_source": "push",
        "job_id": "8222997048",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "groups_direct": ["acme", "acme/platform"],
        "environment": "production",
        "environment_protected": "true",
        "deployment_tier": "production",
        "environment_action": "start",
        "runner_id": 12270835,
        "runner_environment": "gitlab-hosted",
        "sha": "8fe1b322a576d59fe6257052a4107df7dc1b8c78",
        "ci_config_ref_uri": "gitlab.example.com/acme/infra//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "8fe1b322a576d59fe6257052a4107df7dc1b8c78",
        "project_namespace_id": "68413579",
        "jti": str(uuid.uuid4()),
        "iss": issuer,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "sub": "project_path:acme/infra:ref_type:branch:ref:main",
        "aud": "jit-bot",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def mint(claims: dict, key=RSA_KEY, kid: str = GH_KID, alg: str = "RS256") -> str:
    headers = {"kid": kid, "typ": "JWT"}
    if alg == "RS256":
        headers["x5t"] = "bm90LWEtcmVhbC10aHVtYnByaW50"  # GitHub sends one; we ignore it
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def configs(issuers: Issuers) -> dict[str, OidcConfig]:
    return {
        "deploy-main": OidcConfig(
            issuer=issuers.github,
            audience="jit-bot",
            claims={
                "repository": "acme/deploy",
                "ref": "refs/heads/*",
                "environment": "production",
            },
        ),
        "deploy-any": OidcConfig(issuer=issuers.github, audience="jit-bot", claims={"repository_id": "424242"}),
        "infra": OidcConfig(
            issuer=issuers.gitlab,
            audience="jit-bot",
            claims={"project_path": "acme/infra", "ref_protected": "true", "groups_direct": "acme"},
        ),
    }


def rejected(verifier, token, cfgs) -> OidcRejected:
    with pytest.raises(OidcRejected) as err:
        verifier.verify(token, cfgs)
    if len(token) > 8:
        assert token not in str(err.value) and token not in repr(err.value.args)
    return err.value


# ------------------------------------------------------------------ accepted tokens


def test_a_github_actions_token_names_its_pipeline_and_context(issuers, verifier):
    token = mint(github_claims(issuers.github))

    pipeline, claims = verifier.verify(token, configs(issuers))

    assert pipeline == "deploy-main"  # the first matching config wins, in policy order
    assert claims["repository"] == "acme/deploy"
    context, requested_by = verified_context(claims)
    assert requested_by == "octocat"
    assert context == {
        "repository": "acme/deploy",
        "repository_id": "424242",
        "ref": "refs/heads/main",
        "ref_type": "branch",
        "ref_protected": "true",
        "commit": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
        "workflow": "deploy",
        "job_workflow_ref": "acme/deploy/.github/workflows/deploy.yml@refs/heads/main",
        "run_id": "22259804324",
        "run_attempt": "1",
        "actor": "octocat",
        "environment": "production",
        "run_url": "https://github.com/acme/deploy/actions/runs/22259804324",
    }


def test_a_gitlab_id_token_signed_with_es256(issuers, verifier):
    token = mint(gitlab_claims(issuers.gitlab), key=EC_KEY, kid=GL_KID, alg="ES256")

    pipeline, claims = verifier.verify(token, configs(issuers))

    assert pipeline == "infra"
    context, requested_by = verified_context(claims)
    assert requested_by == "alice"
    assert context == {
        "repository": "acme/infra",
        "project_id": "46573356",
        "ref": "refs/heads/main",  # the full ref_path, as GitHub's `ref`: a branch, not a tag
        "ref_type": "branch",
        "ref_protected": "true",
        "commit": "8fe1b322a576d59fe6257052a4107df7dc1b8c78",
        "pipeline_id": "1519139981",
        "job_id": "8222997048",
        "user_login": "alice",
        "environment": "production",
        "ci_config_ref_uri": "gitlab.example.com/acme/infra//.gitlab-ci.yml@refs/heads/main",
        "run_url": f"{issuers.gitlab}/acme/infra/-/pipelines/1519139981",
    }


def test_keys_are_cached_between_tokens(issuers, verifier):
    for _ in range(5):
        verifier.verify(mint(github_claims(issuers.github)), configs(issuers))
    assert issuers.fetches["github:discovery"] == 1
    assert issuers.fetches["github:jwks"] == 1


def test_a_jwks_url_override_skips_discovery(issuers, verifier):
    cfg = {
        "p": OidcConfig(
            issuer=issuers.github,
            audience="jit-bot",
            claims={"repository": "acme/deploy"},
            jwks_url=f"{issuers.github}/jwks",
        )
    }
    assert verifier.verify(mint(github_claims(issuers.github)), cfg)[0] == "p"
    assert issuers.fetches["github:discovery"] == 0


def test_a_list_audience_and_a_little_clock_skew_are_fine(issuers, verifier):
    now = int(time.time())
    claims = github_claims(issuers.github, aud=["other", "jit-bot"], exp=now - 10, iat=now - 310)
    assert verifier.verify(mint(claims), configs(issuers))[0] == "deploy-main"


# ------------------------------------------------------------------ refused tokens


def test_wrong_audience(issuers, verifier):
    e = rejected(
        verifier,
        mint(github_claims(issuers.github, aud="https://github.com/acme")),
        configs(issuers),
    )
    assert (e.status, e.reason) == (401, "wrong audience")


def test_unknown_issuer_is_refused_without_fetching_anything(issuers, verifier):
    token = mint(github_claims("https://token.actions.githubusercontent.com"))
    e = rejected(verifier, token, configs(issuers))
    assert (e.status, e.reason) == (401, "unknown issuer")
    assert sum(issuers.fetches.values()) == 0


def test_missing_issuer(issuers, verifier):
    e = rejected(verifier, mint(github_claims(issuers.github, iss=None)), configs(issuers))
    assert (e.status, e.reason) == (401, "unknown issuer")


def test_expired(issuers, verifier):
    now = int(time.time())
    claims = github_claims(issuers.github, iat=now - 600, nbf=now - 900, exp=now - 120)
    e = rejected(verifier, mint(claims), configs(issuers))
    assert (e.status, e.reason) == (401, "token expired")


def test_not_yet_valid(issuers, verifier):
    now = int(time.time())
    claims = github_claims(issuers.github, nbf=now + 600, iat=now, exp=now + 900)
    e = rejected(verifier, mint(claims), configs(issuers))
    assert (e.status, e.reason) == (401, "token not yet valid")


def test_issued_in_the_future(issuers, verifier):
    """A token that claims to be issued a year from now is refused, even with a valid exp and
    no nbf (PyJWT checks `iat` against the clock from 2.6; the pin relies on it)."""
    later = int(time.time()) + 365 * 86400
    claims = github_claims(issuers.github, iat=later, nbf=None, exp=later + 300)
    e = rejected(verifier, mint(claims), configs(issuers))
    assert (e.status, e.reason) == (401, "token not yet valid")


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
@pytest.mark.parametrize("value", [[1], None, {"t": 1}, "soon"])
def test_time_claims_that_are_not_numbers(issuers, verifier, claim, value):
    """Refused as a bad token, never an unhandled error (PyJWT before 2.15 raised TypeError)."""
    claims = github_claims(issuers.github)
    claims[claim] = value
    e = rejected(verifier, mint(claims), configs(issuers))
    assert e.status == 401


def test_required_claims(issuers, verifier):
    e = rejected(verifier, mint(github_claims(issuers.github, exp=None)), configs(issuers))
    assert (e.status, e.reason) == (401, "missing claim exp")
    e = rejected(verifier, mint(github_claims(issuers.github, aud=None)), configs(issuers))
    assert e.status == 401


def test_signed_by_another_key_with_the_same_kid(issuers, verifier):
    token = mint(github_claims(issuers.github), key=IMPOSTOR_KEY, kid=GH_KID)
    e = rejected(verifier, token, configs(issuers))
    assert (e.status, e.reason) == (401, "bad signature")


def test_tampered_payload(issuers, verifier):
    header, _, sig = mint(github_claims(issuers.github)).split(".")
    forged = b64(json.dumps(github_claims(issuers.github, repository="acme/other")).encode())
    e = rejected(verifier, f"{header}.{forged}.{sig}", configs(issuers))
    assert (e.status, e.reason) == (401, "bad signature")


def test_alg_none(issuers, verifier):
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": GH_KID}).encode())
    payload = b64(json.dumps(github_claims(issuers.github)).encode())
    e = rejected(verifier, f"{header}.{payload}.", configs(issuers))
    assert (e.status, e.reason) == (401, "unsupported algorithm")


def test_hs256_signed_with_the_public_key_text(issuers, verifier):
    """Algorithm confusion: HMAC keyed with the issuer's public PEM must not verify."""
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": GH_KID}).encode())
    payload = b64(json.dumps(github_claims(issuers.github)).encode())
    sig = b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    e = rejected(verifier, f"{header}.{payload}.{sig}", configs(issuers))
    assert (e.status, e.reason) == (401, "unsupported algorithm")


def test_es256_header_on_an_rsa_key(issuers, verifier):
    token = mint(github_claims(issuers.github), key=EC_KEY, kid=GH_KID, alg="ES256")
    e = rejected(verifier, token, configs(issuers))
    assert e.status == 401


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * 20_000])
def test_malformed(issuers, verifier, token):
    e = rejected(verifier, token, configs(issuers))
    assert (e.status, e.reason) == (401, "malformed token")


def test_unknown_kid_refetches_at_most_once_per_cooldown(issuers, verifier, clock):
    cfgs = configs(issuers)
    stranger = mint(github_claims(issuers.github), key=IMPOSTOR_KEY, kid="never-heard-of-it")

    for _ in range(10):
        e = rejected(verifier, stranger, cfgs)
        assert (e.status, e.reason) == (401, "unknown signing key")
    assert issuers.fetches["github:jwks"] == 1  # the first look, then nothing for the cool-down

    clock.t += 30
    rejected(verifier, stranger, cfgs)
    assert issuers.fetches["github:jwks"] == 1

    clock.t += 31  # cool-down over: one refetch, then quiet again
    for _ in range(10):
        rejected(verifier, stranger, cfgs)
    assert issuers.fetches["github:jwks"] == 2

    # Known kids keep working from the cache throughout.
    assert verifier.verify(mint(github_claims(issuers.github)), cfgs)[0] == "deploy-main"
    assert issuers.fetches["github:jwks"] == 2


def test_a_rotated_key_is_picked_up_after_the_cooldown(issuers, verifier, clock):
    cfgs = configs(issuers)
    verifier.verify(mint(github_claims(issuers.github)), cfgs)
    issuers.jwks["github"].append(public_jwk(IMPOSTOR_KEY, "gh-rsa-2"))
    rotated = mint(github_claims(issuers.github), key=IMPOSTOR_KEY, kid="gh-rsa-2")

    assert rejected(verifier, rotated, cfgs).reason == "unknown signing key"
    clock.t += 60
    assert verifier.verify(rotated, cfgs)[0] == "deploy-main"
    assert issuers.fetches["github:jwks"] == 2


def test_an_unreachable_issuer_is_a_503(verifier):
    cfg = {"p": OidcConfig(issuer="http://127.0.0.1:9", audience="jit-bot", claims={"repository": "a/b"})}
    token = mint(github_claims("http://127.0.0.1:9"))
    e = rejected(verifier, token, cfg)
    assert (e.status, e.reason) == (503, "issuer keys unavailable")


def test_a_key_set_over_the_size_limit_is_not_used(issuers, verifier):
    issuers.jwks["github"] = [{"kty": "oct", "padding": "x" * 600_000}, public_jwk(RSA_KEY, GH_KID)]
    e = rejected(verifier, mint(github_claims(issuers.github)), configs(issuers))
    assert (e.status, e.reason) == (503, "issuer keys unavailable")


# ------------------------------------------------------------------ choosing the pipeline


def test_claims_glob_matches_a_branch(issuers, verifier):
    token = mint(github_claims(issuers.github, ref="refs/heads/release/2.1"))
    assert verifier.verify(token, configs(issuers))[0] == "deploy-main"


def test_claims_glob_not_matching_is_a_403(issuers, verifier):
    cfgs = {"deploy-main": configs(issuers)["deploy-main"]}
    token = mint(github_claims(issuers.github, ref="refs/pull/7/merge"))
    e = rejected(verifier, token, cfgs)
    assert (e.status, e.reason) == (403, "no pipeline matches these claims")


def test_a_later_config_matches_when_the_first_does_not(issuers, verifier):
    token = mint(github_claims(issuers.github, ref="refs/tags/v1.0", environment=None))
    assert verifier.verify(token, configs(issuers))[0] == "deploy-any"


def test_a_missing_claim_never_matches(issuers, verifier):
    cfgs = {"deploy-main": configs(issuers)["deploy-main"]}
    token = mint(github_claims(issuers.github, environment=None))
    assert rejected(verifier, token, cfgs).status == 403


def test_configs_with_other_audiences_on_the_same_issuer(issuers, verifier):
    cfgs = {
        "a": OidcConfig(issuer=issuers.github, audience="other", claims={"repository": "*"}),
        "b": OidcConfig(issuer=issuers.github, audience="jit-bot", claims={"repository": "acme/*"}),
    }
    assert verifier.verify(mint(github_claims(issuers.github)), cfgs)[0] == "b"


def test_gitlab_list_claim_and_non_string_claims(issuers, verifier):
    cfgs = {
        "infra": OidcConfig(
            issuer=issuers.gitlab,
            audience="jit-bot",
            claims={"groups_direct": "acme/plat*", "runner_id": "12270835"},
        )
    }
    token = mint(gitlab_claims(issuers.gitlab), key=EC_KEY, kid=GL_KID, alg="ES256")
    assert verifier.verify(token, cfgs)[0] == "infra"
    token = mint(gitlab_claims(issuers.gitlab, groups_direct=["other"]), key=EC_KEY, kid=GL_KID, alg="ES256")
    assert rejected(verifier, token, cfgs).status == 403


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize(
    "issuer",
    [
        "http://token.example.com",
        "http://10.0.0.1",
        "ftp://127.0.0.1",
        "token.example.com",
        "https://x/?a=1",
    ],
)
def test_issuer_must_be_https_unless_loopback(issuer):
    with pytest.raises(ValidationError):
        OidcConfig(issuer=issuer, audience="jit-bot", claims={"repository": "a/b"})


@pytest.mark.parametrize(
    "issuer",
    [
        "https://token.actions.githubusercontent.com",
        "http://127.0.0.1:8080",
        "http://127.1.2.3",
        "http://[::1]:9000",
        "http://localhost:3000",
    ],
)
def test_loopback_http_and_https_issuers_are_fine(issuer):
    OidcConfig(issuer=issuer, audience="jit-bot", claims={"repository": "a/b"})


def test_config_is_strict():
    with pytest.raises(ValidationError):
        OidcConfig(issuer="https://gitlab.com", audience="jit-bot", claims={})
    with pytest.raises(ValidationError):
        OidcConfig(issuer="https://gitlab.com", audience="jit-bot", claims={"a": "b"}, extra=1)
    with pytest.raises(ValidationError):
        OidcConfig(
            issuer="https://gitlab.com",
            audience="jit-bot",
            claims={"a": "b"},
            jwks_url="http://x.com/k",
        )
    cfg = OidcConfig(issuer="https://gitlab.com", audience="jit-bot", claims={"a": "b"})
    with pytest.raises(ValidationError):
        cfg.audience = "other"


# ------------------------------------------------------------------ context


def test_context_for_github_enterprise_issuers():
    ghe = {"iss": "https://token.actions.acme.ghe.com", "repository": "acme/app", "run_id": "7"}
    assert verified_context(ghe)[0]["run_url"] == "https://acme.ghe.com/acme/app/actions/runs/7"
    ghes = {"iss": "https://git.acme.internal/_services/token", "repository": "a/b", "run_id": "7"}
    assert verified_context(ghes)[0]["run_url"] == "https://git.acme.internal/a/b/actions/runs/7"


def test_a_gitlab_tag_and_a_branch_of_the_same_name_have_different_refs():
    branch = verified_context(gitlab_claims("https://gitlab.example.com"))[0]
    tag = verified_context(
        gitlab_claims("https://gitlab.example.com", ref_type="tag", ref_path="refs/tags/main", ref_protected="false")
    )[0]
    assert (branch["ref"], branch["ref_type"]) == ("refs/heads/main", "branch")
    assert (tag["ref"], tag["ref_type"], tag["ref_protected"]) == ("refs/tags/main", "tag", "false")


@pytest.mark.parametrize(
    ("ref_type", "expected"),
    [("branch", "refs/heads/main"), ("tag", "refs/tags/main"), (None, None), ("weird", None)],
)
def test_a_gitlab_token_without_ref_path(ref_type, expected):
    """Older GitLab versions send no ref_path: the full ref comes from ref_type, and without a
    known type the bare name is never offered as `ref` (it could be a branch or a tag)."""
    claims = gitlab_claims("https://gitlab.example.com", ref_path=None, ref_type=ref_type)
    context = verified_context(claims)[0]
    assert context.get("ref") == expected


def test_context_leaves_out_missing_claims():
    context, requested_by = verified_context({"iss": "https://token.actions.githubusercontent.com"})
    assert context == {} and requested_by is None
