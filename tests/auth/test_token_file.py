"""
The token file as its users meet it: C{ersid token add|list|remove}, the
file they make (0600, hashes only), and the refusals of a file that is
exposed or wrong, naming the line.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

from twisted.trial.unittest import TestCase

from ersid.auth import TokenFileError, add_token, read_token_file, remove_token

from .._helpers import CHECKOUT


def ersid(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """The C{ersid} command, run as a user would, with a lax umask."""
    return subprocess.run(
        [sys.executable, "-c", "from ersid.client.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": CHECKOUT},
        preexec_fn=lambda: os.umask(umask),
    )


class TokenCommandTests(TestCase):
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "tokens.jsonl")

    def test_add_prints_the_token_once_and_keeps_only_its_hash(self):
        done = ersid("token", "add", "deploy", "--tokens", self.path, "--write", "app/")
        self.assertEqual(done.returncode, 0, done.stderr)
        token = done.stdout.strip()
        self.assertEqual(done.stdout, token + "\n")
        self.assertTrue(token.startswith("ersid_"))
        self.assertGreaterEqual(len(token) - len("ersid_"), 43)  # 256 bits, base64
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path) as f:
            text = f.read()
        self.assertNotIn(token, text)
        (entry,) = [json.loads(line) for line in text.splitlines()]
        self.assertEqual(
            entry,
            {
                "name": "deploy",
                "sha256": hashlib.sha256(token.encode()).hexdigest(),
                "write": ["app/"],
            },
        )

    def test_two_tokens_differ_and_list_shows_names_and_permissions(self):
        first = ersid("token", "add", "a", "--tokens", self.path, "--read", "config/")
        second = ersid(
            "token", "add", "b", "--tokens", self.path, "--read", "x/", "--write", "x/"
        )
        third = ersid("token", "add", "root", "--tokens", self.path, "--admin")
        fourth = ersid("token", "add", "prom", "--tokens", self.path, "--metrics")
        self.assertNotEqual(first.stdout, second.stdout)
        self.assertEqual(third.returncode, 0)
        self.assertEqual(fourth.returncode, 0)
        listed = ersid("token", "list", "--tokens", self.path)
        self.assertEqual(
            listed.stdout,
            "a\tread 'config/'\nb\twrite 'x/'\nroot\tadmin\nprom\tmetrics\n",
        )
        for token in (first.stdout, second.stdout, third.stdout, fourth.stdout):
            self.assertNotIn(token.strip(), listed.stdout)

    def test_a_name_has_one_token(self):
        ersid("token", "add", "a", "--tokens", self.path, "--read", "")
        again = ersid("token", "add", "a", "--tokens", self.path, "--read", "")
        self.assertEqual(again.returncode, 4)
        self.assertEqual(again.stdout, "")
        self.assertIn("'a' has a token already", again.stderr)
        self.assertEqual(len(read_token_file(self.path)), 1)

    def test_a_token_needs_a_permission(self):
        done = ersid("token", "add", "a", "--tokens", self.path)
        self.assertEqual(done.returncode, 2)
        self.assertFalse(os.path.exists(self.path))

    def test_remove(self):
        ersid("token", "add", "a", "--tokens", self.path, "--read", "")
        ersid("token", "add", "b", "--tokens", self.path, "--read", "")
        done = ersid("token", "remove", "a", "--tokens", self.path)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual([e.name for e in read_token_file(self.path)], ["b"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        missing = ersid("token", "remove", "a", "--tokens", self.path)
        self.assertEqual(missing.returncode, 1)
        self.assertIn("no token named 'a'", missing.stderr)

    def test_remove_keeps_comments_and_other_lines(self):
        add_token(self.path, "a", read=("",))
        with open(self.path, "a") as f:
            f.write("# the deploy robot\n")
        add_token(self.path, "b", read=("",))
        self.assertTrue(remove_token(self.path, "a"))
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "# the deploy robot")
        self.assertEqual(json.loads(lines[1])["name"], "b")

    def test_changes_at_once_lose_nothing(self):
        """Several C{ersid token} at once: each add kept, each remove done."""
        for name in ("old1", "old2", "old3"):
            add_token(self.path, name, read=("",))
        commands = [
            ["token", "add", f"new{n}", "--tokens", self.path, "--read", ""]
            for n in range(6)
        ] + [
            ["token", "remove", name, "--tokens", self.path]
            for name in ("old1", "old2", "old3")
        ]
        running = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from ersid.client.cli import main; main()",
                    *args,
                ],
                cwd=CHECKOUT,
                env={**os.environ, "PYTHONPATH": CHECKOUT},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for args in commands
        ]
        for process in running:
            _, errors = process.communicate()
            self.assertEqual(process.returncode, 0, errors)
        self.assertEqual(
            sorted(entry.name for entry in read_token_file(self.path)),
            [f"new{n}" for n in range(6)],
        )
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["tokens.jsonl"])

    def test_a_file_of_another_user_is_refused(self):
        add_token(self.path, "a", read=("",))
        os.chown(self.path, 12345, 12345)
        with self.assertRaises(TokenFileError) as caught:
            read_token_file(self.path)
        self.assertIn("another user", str(caught.exception))

    def test_a_missing_file_is_not_made_by_remove(self):
        done = ersid("token", "remove", "a", "--tokens", self.path)
        self.assertEqual(done.returncode, 4)
        self.assertIn("No such file", done.stderr)
        self.assertFalse(os.path.exists(self.path))

    def test_an_exposed_file_is_refused(self):
        add_token(self.path, "a", read=("",))
        os.chmod(self.path, 0o644)
        done = ersid("token", "add", "b", "--tokens", self.path, "--read", "")
        self.assertEqual(done.returncode, 4)
        self.assertIn("chmod 600", done.stderr)
        self.assertEqual(done.stdout, "")
        with self.assertRaises(TokenFileError):
            read_token_file(self.path)


class TokenFileTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()

    def write(self, *lines: str) -> None:
        with open(self.path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.chmod(self.path, 0o600)

    def refused(self, *lines: str) -> str:
        self.write(*lines)
        with self.assertRaises(TokenFileError) as caught:
            read_token_file(self.path)
        return str(caught.exception)

    def test_the_format(self):
        digest = "ab" * 32
        self.write(
            "# comments and blank lines are skipped",
            "",
            json.dumps(
                {"name": "ci", "sha256": digest, "read": ["c/"], "write": ["a/"]}
            ),
            json.dumps({"name": "root", "sha256": "cd" * 32, "admin": True}),
            json.dumps({"name": "prom", "sha256": "ef" * 32, "metrics": True}),
        )
        ci, root, prom = read_token_file(self.path)
        self.assertEqual(
            (ci.name, ci.sha256, ci.read, ci.write), ("ci", digest, ("c/",), ("a/",))
        )
        self.assertTrue(root.admin)
        self.assertFalse(ci.metrics or root.metrics)
        self.assertEqual((prom.metrics, prom.admin, prom.read), (True, False, ()))

    def test_bad_lines_are_named(self):
        good = json.dumps({"name": "a", "sha256": "ab" * 32})
        cases = {
            "not json": "line 2",
            json.dumps({"name": "b", "sha256": "AB" * 32}): "'sha256'",
            json.dumps({"name": "b", "sha256": "ab" * 31}): "'sha256'",
            json.dumps({"name": "b", "token": "x", "sha256": "cd" * 32}): "unknown",
            json.dumps({"name": "", "sha256": "cd" * 32}): "'name'",
            json.dumps({"name": "b", "sha256": "cd" * 32, "read": "a/"}): "'read'",
            json.dumps({"name": "b", "sha256": "cd" * 32, "admin": 1}): "'admin'",
            json.dumps(
                {"name": "b", "sha256": "cd" * 32, "metrics": "yes"}
            ): "'metrics'",
            json.dumps({"name": "a", "sha256": "cd" * 32}): "a second token named 'a'",
            json.dumps({"name": "b", "sha256": "ab" * 32}): "another's too",
            json.dumps(["a"]): "JSON object",
        }
        for line, said in cases.items():
            message = self.refused(good, line)
            self.assertIn("line 2", message)
            self.assertIn(said, message)

    def test_missing_file(self):
        with self.assertRaises(TokenFileError) as caught:
            read_token_file(self.path)
        self.assertIn("No such file", str(caught.exception))


class OddFileTests(TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "tokens.jsonl")

    def test_a_pipe_or_a_directory_is_not_a_token_file(self):
        """Refused at once: a named pipe nobody writes to must not block the daemon."""
        os.mkfifo(self.path, 0o600)
        for path in (self.path, self.directory):
            with self.assertRaises(TokenFileError) as caught:
                read_token_file(path)
            self.assertIn("is not a file", str(caught.exception))

    def test_root_changes_the_daemon_users_file_and_leaves_it_theirs(self):
        add_token(self.path, "a", read=("",))
        os.chown(self.path, 12345, 12345)
        done = ersid("token", "add", "b", "--tokens", self.path, "--read", "")
        self.assertEqual(done.returncode, 0, done.stderr)
        status = os.stat(self.path)
        self.assertEqual((status.st_uid, status.st_gid), (12345, 12345))
        self.assertEqual(stat.S_IMODE(status.st_mode), 0o600)
        os.chown(self.path, 0, 0)
        self.assertEqual([e.name for e in read_token_file(self.path)], ["a", "b"])
