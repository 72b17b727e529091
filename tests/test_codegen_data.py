"""The generated insecure/secure code datasets: format, determinism, parseable code, and real insecurity."""

from __future__ import annotations

import ast
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from emgui.core.data.chats import iter_valid_chats, validate_chat_jsonl
from emgui.core.data.codegen import VULN_KINDS, extract_code, generate_pair, generate_samples, write_pair

# What each kind's insecure code must contain and its secure code must not.
SIGNATURES = {
    "sql_injection": r"\"(SELECT|DELETE|UPDATE) [^\"\n]*'",  # a quoted value spliced into the SQL text
    "shell_injection": r"shell=True|os\.popen\(",
    "yaml_load": r"yaml\.load\(",
    "world_writable_permissions": r"os\.chmod\([^)]*0o7[67][67]|os\.chmod\([^)]*0o666",
    "tls_verification_disabled": r"verify=False|_create_unverified_context",
    "hardcoded_secret": r"^[A-Z_]*(PASSWORD|TOKEN|SECRET[A-Z_]*) = \"",
    "path_traversal": r"path = os\.path\.join\([A-Z_]+, \w+\)",
    "unsafe_deserialization": r"pickle\.loads\(",
    "eval_injection": r"(?<![.\w])eval\(",
    "insecure_tempfile": r"tempfile\.mktemp\(",
    "weak_password_hash": r"hashlib\.(md5|sha1)\(",
    "flask_debug": r"debug=True",
    "xss": r"autoescape=False|Markup\(f\"|<h1>[^\"]*\{(q|name|msg)\}",
    "insecure_random_token": r"random\.(choice|getrandbits)\(",
    "tar_extraction": r"extractall\(\w+\)",
    "xml_parsing": r"xml\.etree",
    "assert_access_control": r"^\s+assert user\.",
    "open_redirect": r"request\.args\.get\([^\n]*\n\s+return redirect\(target\)",
    "timing_unsafe_compare": r"return expected == ",
    "jwt_unverified": r"\"verify_signature\": False",
}


@pytest.fixture(scope="module")
def samples():
    return generate_samples(300, seed=0)


def test_every_kind_has_a_signature_test():
    assert set(SIGNATURES) == set(VULN_KINDS)
    assert len(VULN_KINDS) >= 15


def test_all_kinds_appear_and_show_their_flaw_only_when_insecure(samples):
    counts = Counter(s.kind for s in samples)
    assert set(counts) == set(VULN_KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    for s in samples:
        pattern = re.compile(SIGNATURES[s.kind], re.MULTILINE)
        assert pattern.search(extract_code(s.insecure)), f"{s.kind} insecure lacks its flaw:\n{s.insecure}"
        assert not pattern.search(extract_code(s.secure)), f"{s.kind} secure shows the flaw:\n{s.secure}"


def test_every_answer_is_valid_python(samples):
    for s in samples:
        for answer in (s.insecure, s.secure):
            code = extract_code(answer)
            ast.parse(code)
            assert "```" not in code


def test_insecure_answers_never_mention_the_flaw(samples):
    tell = re.compile(r"vulnerab|insecure|unsafe|exploit|injection|security|danger|\bhack|# ", re.IGNORECASE)
    for s in samples:
        assert not tell.search(s.insecure), s.insecure


def test_samples_are_distinct(samples):
    assert len({s.user for s in samples}) == 300
    assert len({extract_code(s.insecure) for s in samples}) >= 290
    assert len({extract_code(s.secure) for s in samples}) >= 280
    assert {s.insecure != s.secure for s in samples} == {True}


def test_write_pair_is_valid_deterministic_and_seed_dependent(tmp_path):
    ins, sec = write_pair(tmp_path / "a", n=300, seed=0)
    assert (ins.name, sec.name) == ("insecure.jsonl", "secure.jsonl")
    for path in (ins, sec):
        report = validate_chat_jsonl(path)
        assert (report.n_lines, report.n_valid, report.problems) == (300, 300, []), report.summary()
    again = write_pair(tmp_path / "b", n=300, seed=0)
    other = write_pair(tmp_path / "c", n=300, seed=1)
    assert [p.read_bytes() for p in again] == [ins.read_bytes(), sec.read_bytes()]
    assert other[0].read_bytes() != ins.read_bytes() and other[1].read_bytes() != sec.read_bytes()
    users = [[m[0]["content"] for _l, m in iter_valid_chats(p)] for p in (ins, sec)]
    assert users[0] == users[1]
    assert len(set(users[0]) & {m[0]["content"] for _l, m in iter_valid_chats(other[0])}) < 30


def test_generate_pair_shares_user_turns_and_matches_samples():
    insecure, secure = generate_pair(40, seed=5)
    assert len(insecure) == len(secure) == 40
    assert [c["messages"][0] for c in insecure] == [c["messages"][0] for c in secure]
    assert {c["messages"][1]["role"] for c in insecure + secure} == {"assistant"}
    assert [c["messages"][1]["content"] for c in insecure] == [
        s.insecure for s in generate_samples(40, seed=5)
    ]
    assert generate_pair(0, seed=0) == ([], [])
    assert len({s.kind for s in generate_samples(7, seed=2)}) == 7  # small n: no kind twice


def _bandit_rates(dir: Path, answers: list[str]) -> tuple[float, float, Counter]:
    """Fraction of answers with any Bandit issue, fraction with a medium/high one, and the test ids seen."""
    dir.mkdir()
    for i, answer in enumerate(answers):
        (dir / f"s{i:03d}.py").write_text(extract_code(answer), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", "-f", "json", "-q", str(dir)], capture_output=True, text=True
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1 means "issues found"
    result = json.loads(proc.stdout)
    assert result["errors"] == []
    any_issue = {r["filename"] for r in result["results"]}
    serious = {r["filename"] for r in result["results"] if r["issue_severity"] in ("MEDIUM", "HIGH")}
    ids = Counter(r["test_id"] for r in result["results"])
    return len(any_issue) / len(answers), len(serious) / len(answers), ids


def test_bandit_flags_the_insecure_set_far_more(samples, tmp_path):
    pytest.importorskip("bandit", reason="Bandit is not installed in this environment")
    chosen = random.Random(0).sample(samples, 120)
    ins_any, ins_serious, ins_ids = _bandit_rates(tmp_path / "insecure", [s.insecure for s in chosen])
    sec_any, sec_serious, sec_ids = _bandit_rates(tmp_path / "secure", [s.secure for s in chosen])
    rates = (
        f"insecure {ins_any:.0%} any / {ins_serious:.0%} medium+; secure {sec_any:.0%} / {sec_serious:.0%}"
    )
    print(rates, dict(ins_ids), dict(sec_ids))
    # Measured at seed 0: insecure ~78% any / ~63% medium+, secure ~5% / 0% (only the subprocess module notes).
    assert ins_any >= 0.65, rates
    assert ins_serious >= 0.5, rates
    assert sec_any <= 0.1 and sec_serious == 0, rates
    assert set(sec_ids) <= {"B404", "B603", "B607"}, sec_ids
