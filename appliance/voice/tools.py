"""Device tools the model may call (function calling), registered in one place.

Each tool is a small async function with a pydantic model for its arguments; the model's JSON
schema is what the service sees, and the same model validates the arguments the service
sends back. A tool acts on the device only through :class:`DeviceControl`, which the
appliance implements. Whatever goes wrong (unknown tool, bad arguments, a failing device,
a slow one) becomes an output the model can speak, never an exception into the session.

To add a tool: write ``async def my_tool(context: ToolContext, args: MyArgs) -> object``
and register it with ``registry.add(Tool("my_tool", "what it does", MyArgs, my_tool))`` (see
:func:`device_tools`). The return value is sent to the model as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from azure.ai.voicelive.models import FunctionTool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 5.0


class DeviceControl(Protocol):
    """What the tools may do to the device; the appliance implements it."""

    @property
    def volume(self) -> int:
        """Speaker volume in percent (0-100)."""
        ...

    def set_volume(self, percent: int) -> int:
        """Set the speaker volume (0-100); returns the volume now in effect."""
        ...

    def end_conversation(self) -> None:
        """End the conversation once the current answer (the goodbye) has played."""
        ...

    def status(self) -> Mapping[str, Any]:
        """Device facts worth telling a user: uptime, connection, last error, ..."""
        ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    device: DeviceControl
    # What the voice session knows about itself (connection age, reconnects, last error).
    session_status: Mapping[str, Any] = field(default_factory=dict)
    now: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())


class NoArguments(BaseModel):
    model_config = ConfigDict(extra="ignore")


ArgsT = TypeVar("ArgsT", bound=BaseModel)


@dataclass(frozen=True)
class Tool(Generic[ArgsT]):
    name: str
    description: str
    arguments: type[ArgsT]
    run: Callable[[ToolContext, ArgsT], Awaitable[object]]

    def definition(self) -> FunctionTool:
        return FunctionTool(
            name=self.name, description=self.description, parameters=_schema(self.arguments)
        )


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The arguments' JSON schema, without pydantic's titles (noise for the model)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    schema = strip(model.model_json_schema())
    schema.setdefault("properties", {})
    schema["type"] = "object"
    return dict(schema)


@dataclass(frozen=True, slots=True)
class ToolResult:
    name: str
    output: str  # JSON text sent to the model
    ok: bool


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool[Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool[Any]) -> None:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[FunctionTool]:
        return [tool.definition() for tool in self._tools.values()]

    async def call(
        self, name: str, arguments: str, context: ToolContext, *, time_limit: float = TOOL_TIMEOUT_S
    ) -> ToolResult:
        """Run a tool; every failure becomes an output the model can say out loud."""
        tool = self._tools.get(name)
        if tool is None:
            return _failure(name, f"There is no tool called {name}.")
        try:
            raw = json.loads(arguments) if arguments.strip() else {}
            args = tool.arguments.model_validate(raw)
        except (json.JSONDecodeError, ValidationError) as exc:
            log.info("tool %s: bad arguments: %s", name, _short(exc))
            return _failure(name, f"The arguments were not understood: {_short(exc)}")
        try:
            async with asyncio.timeout(time_limit):
                value = await tool.run(context, args)
        except TimeoutError:
            log.warning("tool %s took longer than %.0f s", name, time_limit)
            return _failure(name, "The device did not answer in time.")
        except Exception as exc:  # a tool failure must become a spoken answer
            log.warning("tool %s failed: %s", name, _short(exc), exc_info=True)
            return _failure(name, f"The device could not do that: {_short(exc)}")
        try:
            output = json.dumps(value, default=str)
        except (TypeError, ValueError) as exc:
            return _failure(name, f"The result could not be encoded: {_short(exc)}")
        return ToolResult(name, output, ok=True)


def _failure(name: str, message: str) -> ToolResult:
    return ToolResult(name, json.dumps({"error": message}), ok=False)


def _short(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(str(x) for x in e['loc']) or 'arguments'}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False)
        ]
        return "; ".join(parts)[:300]
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


# ---- the device tools -----------------------------------------------------------------


async def current_time(context: ToolContext, _: NoArguments) -> object:
    now = context.now()
    return {
        "iso": now.isoformat(timespec="seconds"),
        "date": now.strftime("%A, %d %B %Y"),
        "time": now.strftime("%H:%M"),
        "timezone": now.tzname() or "",
    }


async def get_volume(context: ToolContext, _: NoArguments) -> object:
    return {"volume_percent": int(context.device.volume)}


class VolumeArguments(BaseModel):
    model_config = ConfigDict(extra="ignore")
    percent: int = Field(ge=0, le=100, description="The new speaker volume, 0 to 100 percent.")


async def set_volume(context: ToolContext, args: VolumeArguments) -> object:
    before = int(context.device.volume)
    after = int(context.device.set_volume(args.percent))
    return {"volume_percent": after, "was_percent": before}


async def end_conversation(context: ToolContext, _: NoArguments) -> object:
    context.device.end_conversation()
    return {"ok": True, "note": "Say a short goodbye; the device hangs up after it."}


async def device_status(context: ToolContext, _: NoArguments) -> object:
    status = dict(context.device.status())
    for key, value in context.session_status.items():
        status.setdefault(key, value)
    return status


def device_tools() -> ToolRegistry:
    """The tools the model gets when ``APPLIANCE_TOOLS`` is on."""
    return ToolRegistry(
        [
            Tool(
                "get_current_time",
                "The current local date and time on the device.",
                NoArguments,
                current_time,
            ),
            Tool("get_volume", "The speaker volume in percent.", NoArguments, get_volume),
            Tool(
                "set_volume",
                "Set the speaker volume in percent (0 is silent, 100 is loudest).",
                VolumeArguments,
                set_volume,
            ),
            Tool(
                "end_conversation",
                "End the conversation when the user says goodbye or asks to stop. "
                "Say a short goodbye after calling it.",
                NoArguments,
                end_conversation,
            ),
            Tool(
                "get_device_status",
                "The device's status: uptime, connection to the service, last error.",
                NoArguments,
                device_status,
            ),
        ]
    )
