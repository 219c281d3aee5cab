"""One exception tree: every exception class the project defines derives from CertificaError.

The modules of ``relay``, ``certifier`` and ``addendum`` are imported and walked, so a
class added anywhere is found; the tree drawn in ``certifier.errors``' docstring must
name it too, so the drawing stays the whole tree.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from certifier import errors
from certifier.errors import CertificaError, PermanentError, StorageError, TemporaryError

PACKAGES = ("relay", "certifier", "addendum")


def project_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, name + "."):
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__
                ):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[key] for key in sorted(found)]


def test_the_walk_finds_the_known_classes() -> None:
    names = {cls.__name__ for cls in project_exceptions()}
    assert {"ConfigError", "DataRefused", "RouteError", "SpoolFileMissing"} <= names


@pytest.mark.parametrize("cls", project_exceptions(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_exception_class_derives_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, CertificaError), f"{cls.__module__}.{cls.__name__}"


@pytest.mark.parametrize("cls", project_exceptions(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_the_drawn_tree_names_every_class(cls: type[BaseException]) -> None:
    assert cls.__name__ in (errors.__doc__ or ""), f"draw {cls.__name__} in certifier/errors.py"


def test_what_a_client_is_told_follows_the_branch() -> None:
    from relay.certify.dsn import ParameterError
    from relay.queue.spool import SpoolFileMissing
    from relay.smtpd.authn import TemporaryAuthError
    from relay.smtpd.protocol import BadCommandLine, DataRefused, NotUtf8

    # 4xx: the client may try again; 5xx: it must not.
    assert issubclass(TemporaryAuthError, TemporaryError)
    for permanent in (DataRefused, BadCommandLine, NotUtf8, ParameterError):
        assert issubclass(permanent, PermanentError)
        assert not issubclass(permanent, TemporaryError)
    # Callers that catch the standard class still do.
    assert issubclass(ParameterError, ValueError)
    assert issubclass(SpoolFileMissing, FileNotFoundError) and issubclass(
        SpoolFileMissing, StorageError
    )


def test_a_leaf_keeps_its_behaviour() -> None:
    from pathlib import Path

    from relay.queue.spool import SpoolFileMissing
    from relay.smtpd.protocol import DataRefused

    missing = SpoolFileMissing("ABC", Path("/nonexistent/ABC"))
    assert str(missing) == "spool file missing: /nonexistent/ABC"
    assert missing.qid == "ABC"
    refused = DataRefused("554 5.6.0 no")
    assert refused.reply == "554 5.6.0 no"
    with pytest.raises(CertificaError):
        raise refused
