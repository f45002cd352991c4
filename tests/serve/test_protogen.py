"""The committed gRPC stubs are exactly what the contract generates."""

from __future__ import annotations

from pathlib import Path

from pdp.serve.proto import authorizer_pb2, authorizer_pb2_grpc
from pdp.serve.protogen import OUT_DIR, generate


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in generate(tmp_path / "proto")}
    committed = {p.name: p.read_text() for p in OUT_DIR.iterdir() if p.is_file()}
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    extra = sorted(set(committed) - set(fresh))
    assert not stale and not extra, (
        f"stubs drifted from proto/ (changed: {stale}, extra: {extra}); "
        "regenerate with: python -m pdp.serve.protogen"
    )


def test_the_contract_names_the_three_methods() -> None:
    service = authorizer_pb2.DESCRIPTOR.services_by_name["Authorizer"]
    assert service.full_name == "tessera.v1.Authorizer"
    assert [m.name for m in service.methods] == ["Authorize", "AuthorizeBatch", "ListAllowed"]
    assert hasattr(authorizer_pb2_grpc, "AuthorizerServicer")


def test_typed_values_round_trip() -> None:
    request = authorizer_pb2.AuthorizeRequest(
        agent=authorizer_pb2.Agent(id="pay-bot"),
        action="tool.call",
        resource=authorizer_pb2.Resource(type="tool", id="payments.transfer"),
        context={
            "amount": authorizer_pb2.Value(money=authorizer_pb2.Money(amount="200", currency="USD"))
        },
    )
    decoded = authorizer_pb2.AuthorizeRequest.FromString(request.SerializeToString())
    assert decoded.context["amount"].WhichOneof("kind") == "money"
    assert decoded.context["amount"].money.currency == "USD"
