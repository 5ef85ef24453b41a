"""
Fuzzing the HTTP API from its own OpenAPI description (served at
/_openapi.json) with schemathesis and all its checks: no 5xx, and every
answer (status, headers, body) the one the description promises.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ersid.auth import TokenAccess, add_token
from ersid.embedded.memory import DictStorage
from ersid.web.app import Service

from .._helpers import Daemon, http, require, serve


class OpenAPIFuzzTests(TestCase):
    timeout = 600

    def test_openapi_document_is_served(self):
        async def check():
            url = await serve(self, Service(DictStorage()))
            response = await http().get(f"{url}/_openapi.json")
            document = json.loads(await response.content())
            self.assertEqual(document["openapi"], "3.0.3")
            self.assertIn("/{key}", document["paths"])

        return Deferred.fromCoroutine(check())

    def test_the_api_answers_as_described(self):
        require(
            importlib.util.find_spec("schemathesis") is not None,
            "needs schemathesis: pip install '.[test]'",
        )
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)

        async def check():
            # With tokens, so that schemathesis also checks that requests
            # without one, or with a wrong one, are refused.
            tokens = os.path.join(workdir, "tokens.jsonl")
            token = add_token(tokens, "fuzzer", admin=True)
            service = Service(
                DictStorage(), max_value_size=4096, access=TokenAccess(tokens)
            )
            url = await serve(self, service)
            fuzzer = Daemon(
                [
                    sys.executable,
                    "-c",
                    "import sys; from schemathesis.cli import schemathesis; "
                    "sys.exit(schemathesis())",
                    "--config-file",
                    os.path.join(os.path.dirname(__file__), "schemathesis.toml"),
                    "run",
                    f"{url}/_openapi.json",
                    "--checks",
                    "all",
                    "--max-examples",
                    "100",
                    "--generation-deterministic",
                    "--header",
                    f"Authorization: Bearer {token}",
                    # A stream has no end; tests/web/test_watch.py has its own.
                    "--exclude-path",
                    "/_watch",
                ],
                env={"SCHEMATHESIS_HOOKS": "", "HOME": workdir},
                cwd=workdir,
            )
            status = await fuzzer.ended
            self.assertEqual(status, 0, fuzzer.output[-3000:])
            generated, passed = re.search(
                r"(\d+) generated, (\d+) passed", fuzzer.output
            ).groups()
            self.assertEqual(generated, passed)
            self.assertGreater(int(generated), 100)

        return Deferred.fromCoroutine(check())
