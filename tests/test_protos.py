"""The API contract in protos/hftgate/v1: documented, in one package, and generated faithfully.

Runs against whatever .proto files exist, so a new file is checked the moment it lands:
1. every message, field, enum, enum value, service and method has a leading comment;
2. every file is in package hftgate.v1;
3. every message of every installed generated module survives a wire round trip, and every
   service has its generated stub and servicer hooks;
4. the installed stubs in hftgate/v1 equal what protoc generates from the protos today.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

import hftgate

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_DIR = PROTO_ROOT / "hftgate" / "v1"
PROTO_FILES = sorted(PROTO_DIR.glob("*.proto"))
WELL_KNOWN_PROTOS = Path(grpc_tools.__file__).parent / "_proto"
# The installed package's generated stubs (the source tree itself for an editable install).
STUB_DIR = Path(hftgate.__file__).resolve().parent / "v1"
STUB_PATTERNS = ("*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi")
PACKAGE = "hftgate.v1"

# Field numbers of the descriptor.proto fields that make up a source-location path.
FILE_MESSAGE = descriptor_pb2.FileDescriptorProto.MESSAGE_TYPE_FIELD_NUMBER
FILE_ENUM = descriptor_pb2.FileDescriptorProto.ENUM_TYPE_FIELD_NUMBER
FILE_SERVICE = descriptor_pb2.FileDescriptorProto.SERVICE_FIELD_NUMBER
MESSAGE_FIELD = descriptor_pb2.DescriptorProto.FIELD_FIELD_NUMBER
MESSAGE_NESTED = descriptor_pb2.DescriptorProto.NESTED_TYPE_FIELD_NUMBER
MESSAGE_ENUM = descriptor_pb2.DescriptorProto.ENUM_TYPE_FIELD_NUMBER
ENUM_VALUE = descriptor_pb2.EnumDescriptorProto.VALUE_FIELD_NUMBER
SERVICE_METHOD = descriptor_pb2.ServiceDescriptorProto.METHOD_FIELD_NUMBER


def proto_name(path: Path) -> str:
    """The name protoc knows a file by: its path under protos/, e.g. ``hftgate/v1/common.proto``."""
    return path.relative_to(PROTO_ROOT).as_posix()


def run_protoc(*args: str) -> None:
    """Runs protoc with the include paths setup.py's build_protos uses; fails the test with its errors."""
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{WELL_KNOWN_PROTOS}", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        pytest.fail(f"protoc failed ({' '.join(args)}):\n{result.stderr}", pytrace=False)


@functools.cache
def compiled(name: str) -> descriptor_pb2.FileDescriptorProto:
    """The descriptor of one proto file, with its comments (source info)."""
    with tempfile.TemporaryDirectory() as out:
        descriptor_set_path = Path(out) / "set.binpb"
        run_protoc(
            "--include_imports", "--include_source_info", f"--descriptor_set_out={descriptor_set_path}", name
        )
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set_path.read_bytes())
    (file,) = (f for f in descriptor_set.file if f.name == name)
    return file


def undocumented_elements(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Full names of the messages, fields, enums, enum values, services and methods without a
    leading comment."""
    comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
    missing: list[str] = []

    def check(kind: str, full_name: str, path: tuple[int, ...]) -> None:
        if not comments.get(path, "").strip():
            missing.append(f"{kind} {full_name}")

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]) -> None:
        full_name = f"{scope}.{enum.name}"
        check("enum", full_name, path)
        for i, value in enumerate(enum.value):
            # Enum values live in the enum's parent scope, but naming the enum reads better.
            check("enum value", f"{full_name}.{value.name}", (*path, ENUM_VALUE, i))

    def walk_message(message: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]) -> None:
        if message.options.map_entry:  # synthesized for a map<,> field, which is checked itself
            return
        full_name = f"{scope}.{message.name}"
        check("message", full_name, path)
        for i, field in enumerate(message.field):
            check("field", f"{full_name}.{field.name}", (*path, MESSAGE_FIELD, i))
        for i, nested in enumerate(message.nested_type):
            walk_message(nested, full_name, (*path, MESSAGE_NESTED, i))
        for i, enum in enumerate(message.enum_type):
            walk_enum(enum, full_name, (*path, MESSAGE_ENUM, i))

    for i, message in enumerate(file.message_type):
        walk_message(message, file.package, (FILE_MESSAGE, i))
    for i, enum in enumerate(file.enum_type):
        walk_enum(enum, file.package, (FILE_ENUM, i))
    for i, service in enumerate(file.service):
        service_name = f"{file.package}.{service.name}"
        check("service", service_name, (FILE_SERVICE, i))
        for j, method in enumerate(service.method):
            check("method", f"{service_name}.{method.name}", (FILE_SERVICE, i, SERVICE_METHOD, j))
    return missing


def generated_module(path: Path, suffix: str) -> ModuleType:
    """Imports ``hftgate.v1.<stem><suffix>`` from the installed stubs."""
    module_name = f"{PACKAGE}.{path.stem}{suffix}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        pytest.fail(f"cannot import {module_name} ({error}); run `make protos`", pytrace=False)


def stub_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for pattern in STUB_PATTERNS for p in directory.glob(pattern)}


proto_files = pytest.mark.parametrize("path", PROTO_FILES, ids=[p.name for p in PROTO_FILES])


# --- 1 and 2: the protos themselves ----------------------------------------------------------


def test_the_api_has_proto_files() -> None:
    assert PROTO_FILES, f"no .proto files in {PROTO_DIR}"


@proto_files
def test_every_element_has_a_leading_comment(path: Path) -> None:
    missing = undocumented_elements(compiled(proto_name(path)))
    assert not missing, f"{proto_name(path)}: {len(missing)} without a leading // comment:\n  " + "\n  ".join(
        missing
    )


@proto_files
def test_package_is_hftgate_v1(path: Path) -> None:
    assert compiled(proto_name(path)).package == PACKAGE


# --- 3: the installed generated modules ------------------------------------------------------


def sample_scalar(field: FieldDescriptor, index: int) -> object:
    """A non-default value for one scalar field, distinct per field and list position."""
    n = field.number + index
    if field.enum_type is not None:
        values = field.enum_type.values
        return values[-1 - index % len(values)].number
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{index}-é"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes([0, 255, n % 256])
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return n + 0.5  # exact in float32 as well
    if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return -(2**40) - n  # beyond 32 bits, and negative
    if field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**40 + n
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return -n
    return n  # uint32, fixed32


def fill_sample(message: Message, depth: int = 0) -> Message:
    """Sets every field of ``message`` (one member per oneof, two entries per list and map),
    recursing into sub-messages up to a small depth so recursive types terminate."""
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and field.name != oneof.fields[0].name:
            continue
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field = entry.fields_by_name["key"]
            value_field = entry.fields_by_name["value"]
            for i in range(2):
                key = sample_scalar(key_field, i)
                if value_field.message_type is not None:
                    fill_sample(value[key], depth + 1)
                else:
                    value[key] = sample_scalar(value_field, i)
        elif field.is_repeated:
            for i in range(2):
                if field.message_type is not None:
                    fill_sample(value.add(), depth + 1)
                else:
                    value.append(sample_scalar(field, i))
        elif field.message_type is not None:
            if depth < 3:
                fill_sample(value, depth + 1)
            else:
                value.SetInParent()
        else:
            setattr(message, field.name, sample_scalar(field, 0))
    return message


def all_message_types(descriptors: list[Descriptor]) -> Iterator[Descriptor]:
    for descriptor in descriptors:
        if descriptor.GetOptions().map_entry:
            continue
        yield descriptor
        yield from all_message_types(list(descriptor.nested_types))


@proto_files
def test_every_message_survives_a_wire_round_trip(path: Path) -> None:
    module = generated_module(path, "_pb2")
    for descriptor in all_message_types(list(module.DESCRIPTOR.message_types_by_name.values())):
        cls = message_factory.GetMessageClass(descriptor)
        sample = fill_sample(cls())
        decoded = cls.FromString(sample.SerializeToString())
        assert decoded == sample, f"{descriptor.full_name} changed on a round trip"
        if descriptor.fields:
            assert decoded.ByteSize() > 0, f"{descriptor.full_name}: the sample set no field"


@proto_files
def test_every_service_has_its_generated_stub_and_servicer(path: Path) -> None:
    messages = generated_module(path, "_pb2")
    services = generated_module(path, "_pb2_grpc")
    for name, service in messages.DESCRIPTOR.services_by_name.items():
        assert hasattr(services, f"{name}Stub"), f"{service.full_name}: no {name}Stub"
        assert hasattr(services, f"{name}Servicer"), f"{service.full_name}: no {name}Servicer"
        assert hasattr(services, f"add_{name}Servicer_to_server"), f"{service.full_name}: no registration"


def streaming_shape(file: descriptor_pb2.FileDescriptorProto, service_name: str) -> dict[str, str]:
    """RPC name -> "unary", "client stream", "server stream" or "bidirectional"."""
    shapes = {
        (False, False): "unary",
        (True, False): "client stream",
        (False, True): "server stream",
        (True, True): "bidirectional",
    }
    (service,) = (s for s in file.service if s.name == service_name)
    return {m.name: shapes[m.client_streaming, m.server_streaming] for m in service.method}


def test_execution_service_has_the_specified_rpcs() -> None:
    assert streaming_shape(compiled("hftgate/v1/execution.proto"), "ExecutionService") == {
        "SubmitOrder": "unary",
        "SubmitOrders": "unary",
        "SubmitOrderColumns": "unary",
        "OrderStream": "bidirectional",
        "CancelOrder": "unary",
        "ReplaceOrder": "unary",
        "CancelAll": "unary",
        "GetOrder": "unary",
        "StreamExecutions": "server stream",
        "GetStats": "unary",
    }


def test_execution_service_documents_its_api_key_metadata_and_status_codes() -> None:
    file = compiled("hftgate/v1/execution.proto")
    (service_index,) = (i for i, s in enumerate(file.service) if s.name == "ExecutionService")
    (comment,) = (
        loc.leading_comments
        for loc in file.source_code_info.location
        if loc.path == [FILE_SERVICE, service_index]
    )
    for term in ("x-api-key", "UNAUTHENTICATED", "INVALID_ARGUMENT", "NOT_FOUND", "another account"):
        assert term in comment, f"ExecutionService's comment does not mention {term}"
    # Another account's order answers as a missing one: no status may tell them apart.
    assert "PERMISSION_DENIED" not in comment
    assert "RESOURCE_EXHAUSTED" in comment


def test_scaler_service_has_the_specified_rpcs() -> None:
    shape = streaming_shape(compiled("hftgate/v1/scaler.proto"), "ScalerService")
    assert shape["WatchReplicas"] == "server stream"
    for rpc in ("ReportMetrics", "GetDecisions", "ListReplicas", "SetPolicy"):
        assert shape[rpc] == "unary"


def test_order_stream_message_keeps_mixed_inputs_in_order() -> None:
    execution = generated_module(PROTO_DIR / "execution.proto", "_pb2")
    common = generated_module(PROTO_DIR / "common.proto", "_pb2")
    request = execution.OrderStreamRequest()
    request.inputs.add().new_order.CopyFrom(
        execution.NewOrder(
            client_order_id="c-1",
            symbol="BTCUSDT",
            side=common.SIDE_BUY,
            order_type=execution.ORDER_TYPE_LIMIT,
            time_in_force=execution.TIME_IN_FORCE_GTC,
            price_ticks=6_012_345,
            quantity_lots=3,
            display_quantity_lots=1,
        )
    )
    request.inputs.add().replace.CopyFrom(
        execution.ReplaceOrderRequest(client_order_id="c-1", quantity_lots=2)
    )
    request.inputs.add().cancel.order_id = 42
    decoded = execution.OrderStreamRequest.FromString(request.SerializeToString())
    assert [i.WhichOneof("input") for i in decoded.inputs] == ["new_order", "replace", "cancel"]
    assert decoded.inputs[0].new_order.price_ticks == 6_012_345
    assert decoded.inputs[1].replace.quantity_lots == 2
    assert decoded.inputs[2].cancel.order_id == 42


def test_rejected_ack_carries_reason_and_no_order_id() -> None:
    execution = generated_module(PROTO_DIR / "execution.proto", "_pb2")
    common = generated_module(PROTO_DIR / "common.proto", "_pb2")
    ack = execution.OrderAck(
        action=execution.ORDER_ACTION_NEW,
        client_order_id="c-2",
        status=execution.ORDER_STATUS_REJECTED,
        reason=common.REJECT_REASON_UNKNOWN_SYMBOL,
        reason_text="Cannot submit order: unknown symbol 'XYZ'",
    )
    decoded = execution.SubmitOrdersResponse.FromString(
        execution.SubmitOrdersResponse(acks=[ack]).SerializeToString()
    ).acks[0]
    assert decoded.reason == common.REJECT_REASON_UNKNOWN_SYMBOL
    assert decoded.order_id == 0 and decoded.sequence == 0 and not decoded.durable


def test_scaling_policy_round_trips() -> None:
    scaler = generated_module(PROTO_DIR / "scaler.proto", "_pb2")
    policy = scaler.ScalingPolicy(
        service="execution",
        min_replicas=1,
        max_replicas=4,
        metric=scaler.SCALING_METRIC_ORDERS_PER_S,
        target_value=1000.0,
        tolerance=0.1,
        scale_up_stabilization_ms=0,
        scale_down_stabilization_ms=300_000,
        backend=scaler.SCALING_BACKEND_LOCAL_PROCESS,
        prediction_horizon_ms=30_000,
    )
    decoded = scaler.SetPolicyRequest.FromString(scaler.SetPolicyRequest(policy=policy).SerializeToString())
    assert decoded.policy == policy


# --- 4: generated code is not stale -----------------------------------------------------------


def test_installed_stubs_match_the_protos() -> None:
    installed = stub_files(STUB_DIR)
    if not installed:
        pytest.skip(f"no generated stubs in {STUB_DIR}: run `make protos` (or `make setup`) first")
    with tempfile.TemporaryDirectory() as out:
        # The same outputs as setup.py's build_protos, so the comparison is byte for byte.
        run_protoc(
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(proto_name(p) for p in PROTO_FILES),
        )
        fresh = stub_files(Path(out) / "hftgate" / "v1")
    missing = sorted(fresh.keys() - installed.keys())
    leftover = sorted(installed.keys() - fresh.keys())
    differ = sorted(name for name in fresh.keys() & installed.keys() if fresh[name] != installed[name])
    problems = [f"missing: {n}" for n in missing] + [f"no proto: {n}" for n in leftover]
    problems += [f"stale: {n}" for n in differ]
    assert not problems, f"generated stubs in {STUB_DIR} are stale; run `make protos`:\n  " + "\n  ".join(
        problems
    )
