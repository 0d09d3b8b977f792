"""The demo server's content, with no I/O: media fixtures, resources,
prompts and the helpers that build results.

Resources and prompts implement every fixture the MCP conformance suite
reads, plus ``demo://readme`` and ``demo://counter``.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from agentgw.demo.effects import Input, InputRequest, Program, RpcError
from agentgw.demo.wire import INVALID_PARAMS, JSON, RESOURCE_NOT_FOUND

if TYPE_CHECKING:
    from agentgw.demo.server import DemoSession

# ---------------------------------------------------------------- fixtures


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence(samples: int = 80, rate: int = 8000) -> bytes:
    data = b"\x00\x00" * samples  # 16-bit mono
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    riff += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


PNG_BASE64 = base64.b64encode(_png_1x1_red()).decode()
WAV_BASE64 = base64.b64encode(_wav_silence()).decode()

README = """\
# agentgw demo server

A small MCP server shipped with agentgw, to try the gateway and to test it.

Tools: `echo`, `add`, `slow` (progress, cancellation), `increment` (resource
update notifications), `list_roots`, and every `test_*` tool of the MCP
conformance suite (text, image, audio, resources, logging, progress,
sampling, elicitation, errors).

Run it with `python -m agentgw.demo` (stdio) or
`python -m agentgw.demo --http 8765` (Streamable HTTP at /mcp).
"""


def object_schema(properties: JSON | None = None, required: tuple[str, ...] = ()) -> JSON:
    out: JSON = {"type": "object", "properties": properties or {}}
    if required:
        out["required"] = list(required)
    return out


def text_result(text: str) -> JSON:
    return {"content": [{"type": "text", "text": text}]}


def tool_error(text: str) -> JSON:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def finished(result: JSON) -> Program:
    """A program that finishes at once."""
    yield from ()
    return result


# ---------------------------------------------------------------- resources

COUNTER_URI = "demo://counter"
TEMPLATE_URI = "test://template/{id}/data"
_TEMPLATE = re.compile(r"^test://template/([^/]+)/data$")


@attrs.frozen
class Resource:
    uri: str
    name: str
    title: str
    description: str
    mime_type: str
    read: Callable[[DemoSession], JSON]

    def describe(self, session: DemoSession) -> JSON:
        out: JSON = {"uri": self.uri, "name": self.name, "description": self.description}
        out["mimeType"] = self.mime_type
        if session.is_at_least("2025-06-18"):
            out["title"] = self.title
        return out


def text_contents(uri: str, mime_type: str, text: str) -> JSON:
    return {"uri": uri, "mimeType": mime_type, "text": text}


RESOURCES = {
    r.uri: r
    for r in (
        Resource(
            "test://static-text",
            "static-text",
            "Static Text Resource",
            "A static text resource for testing",
            "text/plain",
            lambda s: text_contents(
                "test://static-text",
                "text/plain",
                "This is the content of the static text resource.",
            ),
        ),
        Resource(
            "test://static-binary",
            "static-binary",
            "Static Binary Resource",
            "A static binary resource (a PNG image) for testing",
            "image/png",
            lambda s: {"uri": "test://static-binary", "mimeType": "image/png", "blob": PNG_BASE64},
        ),
        Resource(
            "test://watched-resource",
            "watched-resource",
            "Watched Resource",
            "A resource to subscribe to",
            "text/plain",
            lambda s: text_contents(
                "test://watched-resource", "text/plain", "Watched resource content"
            ),
        ),
        Resource(
            "demo://readme",
            "readme",
            "About this server",
            "What the agentgw demo server offers",
            "text/markdown",
            lambda s: text_contents("demo://readme", "text/markdown", README),
        ),
        Resource(
            COUNTER_URI,
            "counter",
            "Counter",
            "A number the increment tool raises; subscribe to hear about it",
            "text/plain",
            lambda s: text_contents(COUNTER_URI, "text/plain", str(s.read_counter())),
        ),
    )
}


def read_resource(s: DemoSession, uri: str) -> JSON:
    resource = RESOURCES.get(uri)
    if resource is not None:
        return resource.read(s)
    match = _TEMPLATE.match(uri)
    if match is not None:
        item_id = match.group(1)
        data = {"id": item_id, "templateTest": True, "data": f"Data for ID: {item_id}"}
        return text_contents(uri, "application/json", json.dumps(data))
    # 2026-07-28 (SEP-2164) says -32602; earlier revisions -32002.
    code = INVALID_PARAMS if s.is_stateless else RESOURCE_NOT_FOUND
    raise RpcError(code, f"Resource not found: {uri}", {"uri": uri})


# ---------------------------------------------------------------- prompts


@attrs.frozen
class Prompt:
    name: str
    title: str
    description: str
    arguments: tuple[tuple[str, str, bool], ...]  # (name, description, required)
    render: Callable[[JSON], list[JSON]]
    completions: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    # A prompt that asks the client for input first: a program returning its result.
    program: Callable[[DemoSession, JSON], Program] | None = None

    def get(self, session: DemoSession, args: JSON) -> Program:
        if self.program is not None:
            return self.program(session, args)
        return finished({"description": self.description, "messages": self.render(args)})

    def describe(self, session: DemoSession) -> JSON:
        out: JSON = {"name": self.name, "description": self.description}
        if session.is_at_least("2025-06-18"):
            out["title"] = self.title
        if self.arguments:
            out["arguments"] = [
                {"name": n, "description": d, "required": r} for n, d, r in self.arguments
            ]
        return out


def _user(content: JSON) -> JSON:
    return {"role": "user", "content": content}


PROMPTS = {
    p.name: p
    for p in (
        Prompt(
            "test_simple_prompt",
            "Simple Test Prompt",
            "A simple prompt without arguments",
            (),
            lambda a: [_user({"type": "text", "text": "This is a simple prompt for testing."})],
        ),
        Prompt(
            "test_prompt_with_arguments",
            "Prompt With Arguments",
            "A prompt with required arguments",
            (("arg1", "First test argument", True), ("arg2", "Second test argument", True)),
            lambda a: [
                _user(
                    {
                        "type": "text",
                        "text": f"Prompt with arguments: arg1='{a['arg1']}', arg2='{a['arg2']}'",
                    }
                )
            ],
            {"arg1": ("paris", "park", "party"), "arg2": ("london", "lisbon", "lyon")},
        ),
        Prompt(
            "test_prompt_with_embedded_resource",
            "Prompt With Embedded Resource",
            "A prompt that includes an embedded resource",
            (("resourceUri", "URI of the resource to embed", True),),
            lambda a: [
                _user(
                    {
                        "type": "resource",
                        "resource": text_contents(
                            a["resourceUri"], "text/plain", "Embedded resource content for testing."
                        ),
                    }
                ),
                _user({"type": "text", "text": "Please process the embedded resource above."}),
            ],
        ),
        Prompt(
            "test_prompt_with_image",
            "Prompt With Image",
            "A prompt that includes image content",
            (),
            lambda a: [
                _user({"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}),
                _user({"type": "text", "text": "Please analyze the image above."}),
            ],
        ),
        Prompt(
            "greeting",
            "Greeting",
            "Asks the model to greet someone",
            (("name", "Who to greet", True), ("style", "formal or casual", False)),
            lambda a: [
                _user(
                    {
                        "type": "text",
                        "text": f"Please write a {a.get('style', 'friendly')} greeting "
                        f"for {a['name']}.",
                    }
                )
            ],
            {"name": ("Ada", "Alan", "Grace", "Linus"), "style": ("formal", "casual")},
        ),
    )
}


def _prompt_with_input(s: DemoSession, args: JSON) -> Program:
    schema = object_schema({"context": {"type": "string"}}, ("context",))
    request = InputRequest(
        "user_context",
        "elicitation/create",
        {"message": "What context should the prompt use?", "requestedSchema": schema},
    )
    context = None
    if s.check_capability("elicitation"):
        reply = (yield Input((request,)))["user_context"]
        content = reply["result"].get("content") if "result" in reply else None
        context = content.get("context") if isinstance(content, dict) else None
    text = f"Prompt with context: {context}" if context else "Prompt without context"
    return {
        "description": "A prompt that asks the client for its context first",
        "messages": [_user({"type": "text", "text": text})],
    }


PROMPTS["test_input_required_result_prompt"] = Prompt(
    "test_input_required_result_prompt",
    "Prompt With Input",
    "A prompt that asks the client for context first (an input_required result from 2026-07-28)",
    (),
    lambda a: [],
    program=_prompt_with_input,
)

TEMPLATE_COMPLETIONS = {"id": ("1", "2", "3", "123")}
