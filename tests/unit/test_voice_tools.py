from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from appliance.voice.tools import (
    NoArguments,
    Tool,
    ToolContext,
    ToolRegistry,
    device_tools,
)


class Device:
    """The appliance side of the tools, as the app implements it (volume, hang-up, status)."""

    def __init__(self, volume: int = 50) -> None:
        self._volume = volume
        self.ended = 0
        self.fail_volume = False

    @property
    def volume(self) -> int:
        return self._volume

    def set_volume(self, percent: int) -> int:
        if self.fail_volume:
            raise OSError("mixer not found")
        self._volume = percent
        return self._volume

    def end_conversation(self) -> None:
        self.ended += 1

    def status(self) -> Mapping[str, Any]:
        return {"uptime_s": 12.5, "state": "responding"}


FIXED = datetime(2025, 3, 14, 15, 9, 26, tzinfo=timezone(timedelta(hours=1), "CET"))


def context(device: Device, **session: Any) -> ToolContext:
    return ToolContext(device, session, now=lambda: FIXED)


async def call(name: str, arguments: str = "{}", device: Device | None = None) -> Any:
    result = await device_tools().call(name, arguments, context(device or Device()))
    return result.ok, json.loads(result.output)


def test_the_device_tools_are_registered_with_json_schemas() -> None:
    registry = device_tools()
    assert registry.names == [
        "get_current_time",
        "get_volume",
        "set_volume",
        "end_conversation",
        "get_device_status",
    ]
    definitions = {d.name: d.as_dict() for d in registry.definitions()}
    assert definitions["set_volume"] == {
        "type": "function",
        "name": "set_volume",
        "description": "Set the speaker volume in percent (0 is silent, 100 is loudest).",
        "parameters": {
            "type": "object",
            "properties": {
                "percent": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 100,
                    "description": "The new speaker volume, 0 to 100 percent.",
                }
            },
            "required": ["percent"],
        },
    }
    assert definitions["get_current_time"]["parameters"] == {"type": "object", "properties": {}}


async def test_current_time() -> None:
    ok, output = await call("get_current_time")
    assert ok
    assert output == {
        "iso": "2025-03-14T15:09:26+01:00",
        "date": "Friday, 14 March 2025",
        "time": "15:09",
        "timezone": "CET",
    }


async def test_get_and_set_volume() -> None:
    device = Device(volume=40)
    assert await call("get_volume", device=device) == (True, {"volume_percent": 40})
    assert await call("set_volume", '{"percent": 75}', device) == (
        True,
        {"volume_percent": 75, "was_percent": 40},
    )
    assert device.volume == 75


@pytest.mark.parametrize("arguments", ['{"percent": 150}', '{"percent": "loud"}', "{}", "{oops"])
async def test_bad_arguments_become_an_error_the_model_can_say(arguments: str) -> None:
    device = Device(volume=40)
    ok, output = await call("set_volume", arguments, device)
    assert not ok
    assert output["error"].startswith("The arguments were not understood")
    assert device.volume == 40


async def test_end_conversation_asks_the_device_to_hang_up() -> None:
    device = Device()
    ok, output = await call("end_conversation", device=device)
    assert ok
    assert output["ok"] is True
    assert device.ended == 1


async def test_device_status_merges_device_and_session_facts() -> None:
    result = await device_tools().call(
        "get_device_status",
        "",
        context(Device(), connected=True, state="ignored: the device's own wins"),
    )
    assert json.loads(result.output) == {"uptime_s": 12.5, "state": "responding", "connected": True}


async def test_a_failing_device_becomes_a_spoken_error_not_an_exception() -> None:
    device = Device()
    device.fail_volume = True
    ok, output = await call("set_volume", '{"percent": 10}', device)
    assert not ok
    assert output == {"error": "The device could not do that: mixer not found"}


async def test_unknown_tool() -> None:
    assert await call("launch_rocket") == (
        False,
        {"error": "There is no tool called launch_rocket."},
    )


async def test_a_slow_tool_is_given_up_on() -> None:
    never = asyncio.Event()

    async def stuck(_: ToolContext, __: NoArguments) -> object:
        await never.wait()
        return None

    registry = ToolRegistry([Tool("stuck", "never answers", NoArguments, stuck)])
    result = await registry.call("stuck", "{}", context(Device()), time_limit=0.01)
    assert not result.ok
    assert json.loads(result.output) == {"error": "The device did not answer in time."}


async def test_a_tool_is_easy_to_add() -> None:
    class Echo(BaseModel):
        text: str

    async def echo(_: ToolContext, args: Echo) -> object:
        return {"said": args.text}

    registry = device_tools()
    registry.add(Tool("echo", "say it back", Echo, echo))
    result = await registry.call("echo", '{"text": "hi"}', context(Device()))
    assert json.loads(result.output) == {"said": "hi"}
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Tool("echo", "again", Echo, echo))
