"""taskmill-example-plugin: a third-party handler plugin, as an outside author would ship one.

Kept in the taskmill repository as a fixture for the end-to-end plugin test. It deliberately
declares no ``install_requires`` on ``taskmill``: the test installs it next to an existing
taskmill, and a declared dependency could make pip fetch an unrelated "taskmill" from an index.
"""

from setuptools import setup

setup(
    name="taskmill-example-plugin",
    version="0.1.0",
    description="An example taskmill plugin declaring the example.reverse handler.",
    python_requires=">=3.11",
    packages=["taskmill_example"],
    install_requires=["marshmallow>=4.0,<5"],
    entry_points={"taskmill": ["example = taskmill_example"]},
)
