"""MLflow metric keys derived from user names (class folders), made safe by one mapping.

MLflow accepts metric keys of at most 250 characters made of letters, digits, "_", "-", ".",
" ", ":" and "/" (":" not on Windows), that do not change under path normalisation
(mlflow.utils.validation: validate_param_and_metric_name, path_not_unique,
MAX_ENTITY_KEY_LENGTH). The mapping keeps letters and digits (any script), "_", "-", "." and
" "; every other character (":", "/", brackets, quotes, "+", ...) becomes "_". A name whose key
would pass 250 characters is cut and ends in "_" plus 8 hex digits of the name's sha256. A
name that is already safe keeps its key unchanged ("cat" -> "test_acc_class.cat";
"cat (domestic)" -> "test_acc_class.cat _domestic_"). Two names that map to one key are
refused (`MetricKeyError`), before training: the data loader checks its class names.

The real names are kept beside the metrics: each run logs `class_names.json`, a mapping from
metric key to class name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from cifarnet.errors import UserError

CLASS_ACC_PREFIX = "test_acc_class."
MAX_KEY_LENGTH = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
CLASS_NAMES_ARTIFACT = "class_names.json"
_UNSAFE = re.compile(r"[^\w.\- ]")


class MetricKeyError(UserError):
    """Two user names map to one metric key."""


def safe_key(prefix: str, name: str) -> str:
    """`prefix` + `name` with every character MLflow may refuse replaced by "_", cut to 250."""
    key = prefix + _UNSAFE.sub("_", name)
    if len(key) > MAX_KEY_LENGTH:
        tag = "_" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        key = key[: MAX_KEY_LENGTH - len(tag)] + tag
    return key


def class_metric_keys(classes: Sequence[str],
                      prefix: str = CLASS_ACC_PREFIX) -> dict[str, str]:
    """{class name: metric key}; MetricKeyError if two names share a key."""
    keys: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name in classes:
        key = safe_key(prefix, name)
        if key in owner:
            raise MetricKeyError(f"class names {owner[key]!r} and {name!r} both become the "
                                 f"MLflow metric key {key!r}; rename one of the folders")
        owner[key] = name
        keys[name] = key
    return keys
