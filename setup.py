import re

from setuptools import find_packages, setup


def _version() -> str:
    """The version in ersid/__init__.py, read without importing the package."""
    with open("ersid/__init__.py", encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)[1]


setup(
    name="ersid",
    version=_version(),
    description="A durable HTTP key-value store built on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[*find_packages(include=["ersid", "ersid.*"]), "twisted.plugins"],
    package_data={
        "ersid.web": ["openapi.json", "ui/*"],
        "ersid.mysql": ["mysql_schema.sql"],
        "twisted.plugins": ["ersid_plugin.py"],
    },
    install_requires=[
        # The Twisted releases Ersid is tested with (the few private names
        # it uses are pinned by tests/test_twisted.py).
        "twisted[conch]>=26.10,<27",
        # llhttp, the HTTP/1.1 parser of the API's connections.
        "httptools>=0.9,<0.10",
        "klein>=24.8",
        "treq>=24.9",
        "attrs>=23.1",
        "zope.interface>=6",
        # The metrics of /_metrics, in Prometheus's text format.
        "prometheus_client>=0.20",
    ],
    entry_points={
        "console_scripts": [
            "ersid = ersid.client.cli:main",
            "ersid-bench = ersid.client.bench:main",
            "ersid-journal = ersid.embedded.journal_tool:main",
        ]
    },
    extras_require={
        "mysql": ["mysqlclient>=2.2"],
        "cli": [],
        "bench": ["matplotlib>=3.8"],
        "test": ["h11>=0.16", "hypothesis>=6.100", "ruff>=0.6", "schemathesis>=4.0"],
    },
)
