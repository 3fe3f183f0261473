"""Fast checks of the secret corpora themselves (not of redaction).

Why: the redaction tests of issue 10 are only as strong as these corpora; a generator
bug (a secret missing from its context, a non-random body, a negative that holds a real
positive, a session line that no longer parses) would silently weaken them.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.secrets.credentials import Credential, encodings, positive, providers
from tests.secrets.negatives import negatives
from tests.secrets.sessions import CLAUDE_MALFORMED, CODEX_MALFORMED, write_corpus

KNOWN_EXAMPLES = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "EXAMPLE")

# The shapes issue 10 names, checked on every credential of the kind.
SHAPES = {
    "hf_user_access_token": r"hf_[A-Za-z]{34}",
    "gcp_private_key_id": r"[0-9a-f]{40}",
    "dd_api_key": r"[0-9a-f]{32}",
    "client_secret_hex": r"[0-9a-f]{40}",
    "azure_storage_account_key": r"[A-Za-z0-9+/]{86}==",
    "sendgrid_api_key": r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
    "slack_webhook": r"[A-Za-z0-9]{24}",
    "slack_bot_token": r"xoxb-\d{12}-\d{13}-[A-Za-z0-9]{24}",
    "slack_user_token": r"xoxp-\d{12}-\d{12}-\d{13}-[0-9a-f]{32}",
    "slack_app_token": r"xapp-1-A[A-Z0-9]{10}-\d{13}-[0-9a-f]{64}",
    "npm_access_token": r"npm_[A-Za-z0-9]{36}",
    "databricks_pat": r"dapi[0-9a-f]{32}(-\d)?",
    "do_pat": r"dop_v1_[0-9a-f]{64}",
    "doppler_service_token": r"dp\.st\.(prd|stg|dev)\.[A-Za-z0-9]{40,44}",
    "shopify_access_token": r"shpat_[0-9a-f]{32}",
    "shopify_shared_secret": r"shpss_[0-9a-f]{32}",
    "supabase_pat": r"sbp_[0-9a-f]{40}",
    "supabase_service_role_jwt": r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]{43}",
    "mailgun_api_key": r"key-[0-9a-f]{32}",
    "age_secret_key": r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
    "sentry_dsn_key": r"[0-9a-f]{32}",
    "github_pat_classic": r"ghp_[A-Za-z0-9]{36}",
    "github_fine_grained_pat": r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
    "gitlab_pat": r"glpat-[\w-]{20}",
    "anthropic_api_key": r"sk-ant-api03-[\w-]{93}AA",
    "openai_project_key": r"sk-proj-[\w-]{74}T3BlbkFJ[\w-]{74}",
    "google_api_key": r"AIza[\w-]{35}",
    "aws_access_key_id": r"AKIA[A-Z2-7]{16}",
    "aws_secret_access_key": r"[A-Za-z0-9+/]{40}",
    "newrelic_user_key": r"NRAK-[A-Z0-9]{27}",
    "grafana_service_account_token": r"glsa_[A-Za-z0-9]{32}_[0-9a-f]{8}",
    "postman_api_key": r"PMAK-[0-9a-f]{24}-[0-9a-f]{34}",
    "terraform_cloud_token": r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9]{67}",
    "vault_service_token": r"hvs\.[\w-]{24}",
    "linear_api_key": r"lin_api_[A-Za-z0-9]{40}",
    "telegram_bot_token": r"\d{9,10}:AA[\w-]{33}",
}
REQUIRED_KINDS = set(SHAPES) | {
    "k8s_secret_data_password", "k8s_dockerconfigjson", "gcp_service_account_private_key", "redis_url_password",
    "postgres_url_password", "rsa_private_key", "ec_private_key", "openssh_private_key", "password_assignment",
    "bearer_jwt", "pypi_upload_token", "discord_bot_token", "heroku_api_key", "netlify_pat", "notion_ntn_token",
    "atlassian_api_token", "okta_api_token", "dd_app_key", "grafana_cloud_token", "mapbox_secret_token",
    "cloudflare_api_token", "stripe_restricted_key", "twilio_auth_token", "vercel_token", "github_oauth_token",
    "github_app_installation_token", "notion_integration_secret",
}


def entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


@pytest.fixture(scope="module")
def creds() -> list[Credential]:
    return positive(0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Credential]]:
    return write_corpus(tmp_path_factory.mktemp("secrets-corpus"), 0)


def _files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.jsonl"))


def _main_session(claude_dir: Path) -> Path:
    """The planted session (the other one only lives in a folder named after a token)."""
    return max(_files(claude_dir), key=lambda p: p.stat().st_size)


def test_counts(creds: list[Credential]) -> None:
    assert len(creds) >= 300
    assert len(providers(creds)) >= 60
    per_provider = Counter(c.provider for c in creds)
    assert sum(n >= 3 for n in per_provider.values()) >= 40  # several contexts per provider


def test_secret_in_context_and_unique(creds: list[Credential]) -> None:
    for c in creds:
        assert c.secret and c.secret in c.context, c
    secrets = [c.secret for c in creds]
    assert len(set(secrets)) == len(secrets)
    shapes: dict[str, set[str]] = {}
    for c in creds:
        shapes.setdefault(c.provider, set()).add(re.sub(r"\d+", "0", c.context.replace(c.secret, "<S>")))
    for provider, n in Counter(c.provider for c in creds).items():
        assert n < 2 or len(shapes[provider]) >= 2, provider  # different contexts, not one repeated


def test_random_bodies(creds: list[Credential]) -> None:
    for c in creds:
        assert not any(k in c.secret for k in KNOWN_EXAMPLES), c
        assert len(c.secret) >= 12, c
        assert entropy(c.secret) >= 3.0, c


def test_issue_shapes(creds: list[Credential]) -> None:
    kinds = {c.kind for c in creds}
    assert REQUIRED_KINDS <= kinds, REQUIRED_KINDS - kinds
    for c in creds:
        if c.kind in SHAPES:
            assert re.fullmatch(SHAPES[c.kind], c.secret), c
    assert any(c.kind == "hf_user_access_token" and c.context == c.secret for c in creds)  # bare
    assert any(c.kind == "hf_user_access_token" and c.context != c.secret for c in creds)
    assert any("/" in c.secret for c in creds if c.kind == "postgres_url_password")
    assert any(re.search(r"redis://:[^@]+@", c.context) for c in creds if c.kind == "redis_url_password")
    assert any(c.context.startswith("npm publish --//registry.npmjs.org/:_authToken=") for c in creds)
    assert any(f"/{c.secret}/" in c.context for c in creds if c.kind == "npm_access_token")  # path segment
    assert any("AccountKey=" in c.context for c in creds if c.kind == "azure_storage_account_key")
    for c in creds:
        if c.kind.startswith("k8s_secret_data") or c.kind == "k8s_dockerconfigjson":
            base64.b64decode(c.secret, validate=True)
        if c.kind == "sentry_dsn_key":
            assert re.search(rf"https://{c.secret}@o\d+\.ingest\.", c.context)
        if c.kind == "gcp_service_account_private_key":
            assert c.secret.startswith("-----BEGIN PRIVATE KEY-----\\n")


def test_deterministic() -> None:
    assert positive(0) == positive(0)
    assert positive(1) != positive(0)
    assert negatives(0) == negatives(0)
    assert negatives(1) != negatives(0)


def test_negatives(creds: list[Credential]) -> None:
    neg = negatives(0)
    assert len(neg) >= 300
    assert len(set(neg)) == len(neg)
    blob = "\x00".join(neg)
    for c in creds:
        assert c.secret not in blob, c
    assert "AKIAIOSFODNN7EXAMPLE" in blob
    assert "data:image/png;base64,iVBORw0KGgo" in blob


def test_corpus_parses(corpus: tuple[Path, Path, list[Credential]]) -> None:
    claude_dir, codex_dir, _ = corpus
    broken = {}
    for path in _files(claude_dir, codex_dir):
        bad = 0
        for line in path.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                bad += 1
        broken[path] = bad
    assert len(broken) == 3  # a Claude session, a Codex rollout, a session in a secret folder
    assert sorted(broken[p] for p in _files(claude_dir)) == [0, CLAUDE_MALFORMED]
    assert [broken[p] for p in _files(codex_dir)] == [CODEX_MALFORMED]


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    return out


def test_tool_calls_pair(corpus: tuple[Path, Path, list[Credential]]) -> None:
    claude_dir, codex_dir, _ = corpus
    uses, results = [], []
    for rec in _records(_main_session(claude_dir)):
        content = rec.get("message", {}).get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_use":
                uses.append(block["id"])
            if block.get("type") == "tool_result":
                results.append(block["tool_use_id"])
    assert uses and sorted(uses) == sorted(results) and len(set(uses)) == len(uses)
    calls, outputs = [], []
    for rec in _records(_files(codex_dir)[0]):
        payload = rec["payload"]
        if payload.get("type") in ("function_call", "custom_tool_call"):
            calls.append(payload["call_id"])
        if payload.get("type") in ("function_call_output", "custom_tool_call_output"):
            outputs.append(payload["call_id"])
    assert calls and sorted(calls) == sorted(outputs) and len(set(calls)) == len(calls)


def test_every_secret_planted(corpus: tuple[Path, Path, list[Credential]]) -> None:
    claude_dir, codex_dir, creds = corpus
    data = b"\n".join(p.read_bytes() for p in _files(claude_dir, codex_dir))
    missing = [c for c in creds if not any(e.encode() in data for e in encodings(c.secret))]
    assert not missing, missing[:3]


def test_placements(corpus: tuple[Path, Path, list[Credential]]) -> None:
    """Secrets reach every field the issue lists: prompt, thinking, Bash/Write/Edit inputs,
    tool results, Codex arguments and outputs, reasoning, file paths."""
    claude_dir, codex_dir, creds = corpus
    secrets = [c.secret for c in creds]
    where: dict[str, list[str]] = {}

    def add(key: str, value: object) -> None:
        where.setdefault(key, []).append(value if isinstance(value, str) else json.dumps(value))

    for rec in _records(_main_session(claude_dir)):
        content = rec.get("message", {}).get("content")
        if rec.get("type") == "user" and isinstance(content, str):
            add("prompt", content)
        for block in content if isinstance(content, list) else []:
            kind = block.get("type")
            if kind == "thinking":
                add("thinking", block["thinking"])
            elif kind == "tool_use":
                add("tool:" + block["name"], block["input"])
                if "file_path" in block["input"]:
                    add("path", block["input"]["file_path"])
            elif kind == "tool_result":
                add("tool_result", block["content"])
    for rec in _records(_files(codex_dir)[0]):
        payload = rec["payload"]
        kind = payload.get("type")
        if kind == "function_call":
            add("codex_arguments", payload["arguments"])
        elif kind in ("function_call_output", "custom_tool_call_output"):
            add("codex_output", payload["output"])
        elif kind == "reasoning":
            add("codex_reasoning", payload["summary"])
        elif kind == "user_message":
            add("codex_prompt", payload["message"])
    for key in ("prompt", "thinking", "tool:Bash", "tool:Write", "tool:Edit", "tool_result", "path",
                "codex_arguments", "codex_output", "codex_reasoning", "codex_prompt"):
        text = "\n".join(where.get(key, []))
        hits = sum(any(e in text for e in encodings(s)) for s in secrets)
        assert hits >= 3 if key != "path" else hits >= 1, key


def test_corpus_deterministic(tmp_path: Path, corpus: tuple[Path, Path, list[Credential]]) -> None:
    claude_dir, codex_dir, _ = corpus
    again_claude, again_codex, _ = write_corpus(tmp_path, 0)
    assert [p.read_bytes() for p in _files(claude_dir, codex_dir)] == [p.read_bytes() for p in _files(again_claude, again_codex)]
