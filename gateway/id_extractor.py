"""Tyk's ID extractor: which credential identifies a request, before the auth plugin runs.

`custom_middleware.id_extractor` = {"extract_from": header|form|body,
"extract_with": value|regex|xpath, "extractor_config": {...}}.  The session
id is the API's org id + md5 of the extracted value; while the session cached
under it has an `id_extractor_deadline` in the future, the auth plugin is not
called.  `value` with `body` is refused when the definition loads.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from gateway.tyk_object import RequestState

__all__ = ["IdExtractor"]


@dataclass(frozen=True, slots=True)
class IdExtractor:
    source: str  # header | form | body
    method: str  # value | regex | xpath
    name: str  # header_name / param_name ("" for body)
    pattern: re.Pattern[str] | None = None
    match_index: int = 0
    xpath: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> IdExtractor | None:
        """None when the API has no (usable) id extractor; the loader validated it."""
        source, method = cfg.get("extract_from", ""), cfg.get("extract_with", "")
        if not source or not method:
            return None
        ec = cfg.get("extractor_config") or {}
        if source == "header":
            name = ec.get("header_name", "")
        elif source == "form":  # Tyk's `param_name`; Coproc's older `form_param_name`
            name = ec.get("param_name", "") or ec.get("form_param_name", "")
        else:
            name = ""
        pattern = re.compile(ec.get("regex_expression", "")) if method == "regex" else None
        return cls(source, method, name, pattern, int(ec.get("regex_match_index", 0) or 0),
                   ec.get("xpath_expression", ""))

    def extract(self, state: RequestState) -> str:
        """The credential, "" when the request does not carry one."""
        raw = self._raw(state)
        if not raw or self.method == "value":
            return raw
        if self.method == "regex" and self.pattern is not None:
            matches = [m.group(0) for m in self.pattern.finditer(raw)]
            return matches[self.match_index] if 0 <= self.match_index < len(matches) else ""
        if self.method == "xpath":
            return _xpath(raw, self.xpath)
        return ""

    def _raw(self, state: RequestState) -> str:
        if self.source == "header":
            return state.header_view().get(_canonical(self.name), "") or \
                state.headers.get(self.name, "")
        text = state.body_text()  # reads the buffered body: plugins still get all of it
        if self.source == "form":
            for key, value in parse_qsl(text, keep_blank_values=True):
                if key == self.name:
                    return value
            return ""
        return text

    def session_id(self, org_id: str, value: str) -> str:
        return org_id + hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()


def _canonical(name: str) -> str:
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def _xpath(text: str, expression: str) -> str:
    # expat >= 2.4.1 (Python 3.11's) refuses entity expansion bombs.
    try:
        root = ET.fromstring(text)  # noqa: S314 - see the import
    except ET.ParseError:
        return ""
    expr = expression.lstrip("/")
    # ElementTree paths are relative to the root element: drop its own name.
    head, _, rest = expr.partition("/")
    if head == root.tag:
        found = root.text if not rest else root.findtext(rest)
    else:
        found = root.findtext(".//" + expr)
    return (found or "").strip()
