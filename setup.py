from setuptools import setup

setup(
    name="ersid",
    version="0.1.0",
    description="A durable HTTP key-value store built on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["ersid", "twisted.plugins"],
    package_data={"ersid": ["openapi.json"], "twisted.plugins": ["ersid_plugin.py"]},
    install_requires=[
        "twisted[conch]>=24.7",
        "klein>=24.8",
        "treq>=24.9",
        "attrs>=23.1",
        "zope.interface>=6",
    ],
    entry_points={
        "console_scripts": [
            "ersid = ersid._cli:main",
            "ersid-bench = ersid.bench:main",
        ]
    },
    extras_require={
        "mysql": ["mysqlclient>=2.2"],
        "cli": [],
        "bench": ["matplotlib>=3.8"],
        "test": ["hypothesis>=6.100", "ruff>=0.6", "schemathesis>=4.0"],
    },
)
