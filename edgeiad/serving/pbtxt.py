"""Protocol-buffer text format for Triton's config.pbtxt, from plain Python values (no protobuf needed)."""

from __future__ import annotations

_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


class Enum(str):
    """A protobuf enum value (TYPE_FP32, KIND_CPU): written bare, not quoted."""


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} in a config.pbtxt")


def _quote(text: str) -> str:
    """A text-format string literal; bytes outside printable ASCII as octal escapes every parser reads."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in _ESCAPES:
            out.append(_ESCAPES[byte])
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _field(name: str, value, indent: str) -> list[str]:
    if isinstance(value, dict):
        return [f"{indent}{name} {{", *_message(value, indent + "  "), f"{indent}}}"]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        lines = []
        for item in value:  # a repeated message: one block per item
            lines += _field(name, item, indent)
        return lines
    if isinstance(value, list):
        items = ", ".join(_scalar(item) for item in value)
        return [f"{indent}{name}: [ {items} ]" if items else f"{indent}{name}: []"]
    return [f"{indent}{name}: {_scalar(value)}"]


def _message(message: dict, indent: str) -> list[str]:
    lines = []
    for name, value in message.items():
        if value is None:
            continue
        lines += _field(name, value, indent)
    return lines


def string_map(values: dict[str, str]) -> list[dict]:
    """A map<string, ModelParameter> (config `parameters`) as repeated key/value entries."""
    return [{"key": key, "value": {"string_value": str(value)}} for key, value in values.items()]


def plain_map(values: dict[str, str]) -> list[dict]:
    """A map<string, string> (accelerator `parameters`) as repeated key/value entries."""
    return [{"key": key, "value": str(value)} for key, value in values.items()]


def render(config: dict, comments: list[str] = ()) -> str:
    """The text of a config.pbtxt: leading `#` comments, then one field per line; None values are left out."""
    header = [f"# {line}" for line in comments]
    return "\n".join([*header, *_message(config, "")]) + "\n"
