"""A local Azure Voice Live service: protocol-faithful, on loopback, for simulate mode and tests.

``async with Emulator() as emulator:`` then connect the SDK to ``emulator.url``. The emulator
imports nothing of the device: it is an honest stand-in for the service.
"""

from appliance.emulator.faults import (
    SERVICE_MAX_CONNECTION_S,
    Close,
    Drop,
    Expire,
    FaultPlan,
    Faults,
    Malformed,
    SendError,
    StopReading,
)
from appliance.emulator.protocol import (
    Conversation,
    ConversationOptions,
    ProtocolError,
    Step,
    Truncation,
)
from appliance.emulator.records import ConnectionRecord, HandshakeRecord
from appliance.emulator.responders import (
    Failure,
    FunctionCall,
    FunctionOutput,
    Parrot,
    Reply,
    Responder,
    Script,
    Speech,
    Text,
    Turn,
)
from appliance.emulator.server import DEFAULT_AUDIO_SPEED, PATH, Emulator

__all__ = [
    "DEFAULT_AUDIO_SPEED",
    "PATH",
    "SERVICE_MAX_CONNECTION_S",
    "Close",
    "ConnectionRecord",
    "Conversation",
    "ConversationOptions",
    "Drop",
    "Emulator",
    "Expire",
    "Failure",
    "FaultPlan",
    "Faults",
    "FunctionCall",
    "FunctionOutput",
    "HandshakeRecord",
    "Malformed",
    "Parrot",
    "ProtocolError",
    "Reply",
    "Responder",
    "Script",
    "SendError",
    "Speech",
    "Step",
    "StopReading",
    "Text",
    "Truncation",
    "Turn",
]
