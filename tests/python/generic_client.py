#!/usr/bin/env python3
"""A generic gRPC client of the chat platform, built from nothing but proto/chat.proto.

Why: the API's promise is that any gRPC client holding chat.proto can chat. This
script is such a client, in another language than the platform: it generates
Python stubs from the given .proto into a temporary directory with
grpc_tools.protoc at run time (nothing generated is kept or committed), then
checks, across two gateways:

- EchoService.Echo answers on both gateways (no authentication), and the two
  are different gateway instances;
- alice creates a private conversation named --conversation with bob as a
  member (CreateConversation; she becomes its owner);
- alice (gateway A) and bob (gateway B) open ChatService.Connect with
  `authorization: Bearer <jwt>` metadata and join it (each waits for its
  PresenceSnapshot);
- alice sends --count messages with distinct client_message_ids on her stream
  and gets a SendAccepted for each; bob receives every one, exactly once, in
  increasing seq order, bodies matching;
- bob sends one message with the unary SendMessage on gateway B; alice
  receives it on her stream.

Every wait is bounded by one overall deadline (--timeout, 30 s by default);
nothing sleeps to synchronize. Prints one summary line and exits 0 on success;
prints the reason to stderr and exits 1 on any failure (2 on bad usage).

With --participant it is instead one member among other kinds of client (the
browser tests): it joins --conversation on --gateway-a as the user of
--token-alice, says --say, and waits until it has received every --expect
SENDER=BODY message, exactly once each.

Run by tests/tests/generic_client.rs and tests/tests/browser.rs with the
interpreter of a venv built from tests/python/requirements-grpc.txt
(CHAT_GRPC_PYTHON).
"""

from __future__ import annotations

import argparse
import importlib
import os
import queue
import sys
import tempfile
import threading
import time
from importlib import resources
from typing import Any, Callable, Optional, TypeVar

import grpc
from grpc_tools import protoc

T = TypeVar("T")


class Failure(Exception):
    """The check failed; the message says why."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def check(self, what: str) -> float:
        left = self.left()
        if left <= 0:
            raise Failure(f"overall deadline of {self.seconds:g} s passed while {what}")
        return left


def generate_stubs(proto: str, out_dir: str) -> tuple[Any, Any]:
    """Compiles `proto` into `out_dir` and imports the message and service modules."""
    proto = os.path.abspath(proto)
    if not os.path.isfile(proto):
        raise Failure(f"proto file not found: {proto}")
    include = os.path.dirname(proto)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{include}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        proto,
    ]
    code = protoc.main(args)
    if code != 0:
        raise Failure(f"grpc_tools.protoc failed with exit code {code} on {proto}")
    stem = os.path.splitext(os.path.basename(proto))[0]
    sys.path.insert(0, out_dir)
    try:
        return importlib.import_module(f"{stem}_pb2"), importlib.import_module(f"{stem}_pb2_grpc")
    except ImportError as e:
        raise Failure(f"cannot import the stubs generated from {proto}: {e}") from e


def channel_for(target: str) -> grpc.Channel:
    """A channel to `http://host:port`, `https://host:port` or `host:port`."""
    if target.startswith("https://"):
        return grpc.secure_channel(target[len("https://") :].rstrip("/"), grpc.ssl_channel_credentials())
    if target.startswith("http://"):
        target = target[len("http://") :]
    return grpc.insecure_channel(target.rstrip("/"))


def auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def rpc_error(what: str, e: grpc.RpcError) -> Failure:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    name = code.name if code is not None else "?"
    return Failure(f"{what}: {name}: {details}")


class Ended:
    """Put on a stream's event queue when the stream has ended."""

    def __init__(self, error: Optional[grpc.RpcError]) -> None:
        self.error = error

    def describe(self) -> str:
        if self.error is None:
            return "the gateway closed the stream (OK)"
        code = self.error.code()
        return f"{code.name if code else '?'}: {self.error.details()}"


class Stream:
    """One `Connect` stream: frames go out through a queue-fed request
    iterator, events come in through a reader thread into another queue."""

    def __init__(self, user: str, gateway: str, pb: Any, stub: Any, token: str, deadline: Deadline) -> None:
        self.user = user
        self.gateway = gateway
        self.pb = pb
        self.deadline = deadline
        self.requests: "queue.Queue[Any]" = queue.Queue()
        self.incoming: "queue.Queue[Any]" = queue.Queue()
        self.received: list[Any] = []  # every ServerEvent, in arrival order
        self.ended: Optional[Ended] = None
        self.call = stub.Connect(self._frames(), metadata=auth(token), timeout=deadline.left())
        self.reader = threading.Thread(target=self._read, name=f"{user}-reader", daemon=True)
        self.reader.start()

    def _frames(self):
        while True:
            frame = self.requests.get()
            if frame is None:  # half-close
                return
            yield frame

    def _read(self) -> None:
        try:
            for event in self.call:
                self.incoming.put(event)
            self.incoming.put(Ended(None))
        except grpc.RpcError as e:
            self.incoming.put(Ended(e))

    def send_frame(self, request_id: str, **frame: Any) -> None:
        if self.ended is not None:
            raise Failure(f"{self.user}: cannot send on an ended stream ({self.ended.describe()})")
        self.requests.put(self.pb.ClientFrame(request_id=request_id, **frame))

    def join(self, conversation: str) -> Any:
        self.send_frame(f"join-{conversation}", join=self.pb.JoinFrame(conversation_id=conversation))
        return self.wait_until(
            f"waiting for the PresenceSnapshot of {conversation}",
            lambda events: next(
                (
                    e.presence_snapshot
                    for e in events
                    if e.WhichOneof("event") == "presence_snapshot"
                    and e.presence_snapshot.conversation_id == conversation
                ),
                None,
            ),
        )

    def wait_until(self, what: str, check: Callable[[list[Any]], Optional[T]]) -> T:
        """Reads events until `check(all events so far)` returns something.
        Any ErrorEvent or Disconnect, the end of the stream, or the deadline
        is a failure."""
        while True:
            found = check(self.received)
            if found is not None:
                return found
            if self.ended is not None:
                raise Failure(f"{self.user}@{self.gateway}: stream ended ({self.ended.describe()}) while {what}")
            left = self.deadline.left()
            try:
                if left <= 0:
                    raise queue.Empty
                item = self.incoming.get(timeout=left)
            except queue.Empty:
                raise Failure(
                    f"{self.user}@{self.gateway}: overall deadline of {self.deadline.seconds:g} s passed while {what}; "
                    f"received so far: {summarize(self.received)}"
                ) from None
            if isinstance(item, Ended):
                self.ended = item
                continue
            self.received.append(item)
            kind = item.WhichOneof("event")
            if kind == "error":
                err = item.error
                raise Failure(
                    f"{self.user}@{self.gateway}: ErrorEvent while {what}: code {err.code} {err.message!r} "
                    f"(request_id {err.request_id!r}, client_message_id {err.client_message_id!r})"
                )
            if kind == "disconnect":
                raise Failure(f"{self.user}@{self.gateway}: Disconnect while {what}: {item.disconnect}")

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.reader.join(timeout=5)


def summarize(events: list[Any]) -> list[str]:
    out = []
    for e in events[-40:]:
        kind = e.WhichOneof("event")
        if kind == "message":
            out.append(f"message {e.message.conversation_id}#{e.message.seq} from {e.message.sender}")
        elif kind == "send_accepted":
            out.append(f"send_accepted {e.send_accepted.client_message_id}#{e.send_accepted.seq}")
        else:
            out.append(kind or "empty")
    return out


def messages(events: list[Any], conversation: str, sender: str) -> list[Any]:
    return [
        e.message
        for e in events
        if e.WhichOneof("event") == "message"
        and e.message.conversation_id == conversation
        and e.message.sender == sender
    ]


def echo(pb: Any, pb_grpc: Any, channel: grpc.Channel, name: str, deadline: Deadline) -> str:
    text = f"hello {name}"
    try:
        reply = pb_grpc.EchoServiceStub(channel).Echo(
            pb.EchoRequest(message=text), timeout=deadline.check(f"calling Echo on {name}")
        )
    except grpc.RpcError as e:
        raise rpc_error(f"Echo on gateway {name}", e) from None
    if reply.message != text:
        raise Failure(f"Echo on gateway {name} answered {reply.message!r}, expected {text!r}")
    if not reply.gateway_id:
        raise Failure(f"Echo on gateway {name} named no gateway_id")
    return reply.gateway_id


def run(args: argparse.Namespace, work_dir: str) -> str:
    deadline = Deadline(args.timeout)
    pb, pb_grpc = generate_stubs(args.proto, work_dir)
    conversation, n = args.conversation, args.count

    channel_a = channel_for(args.gateway_a)
    channel_b = channel_for(args.gateway_b)
    streams: list[Stream] = []
    try:
        gw_a = echo(pb, pb_grpc, channel_a, "A", deadline)
        gw_b = echo(pb, pb_grpc, channel_b, "B", deadline)
        if gw_a == gw_b:
            raise Failure(f"gateways A and B are the same instance ({gw_a}): expected two gateways")

        # Joining admits members only (or anyone to a public conversation):
        # alice creates the conversation, bob is in it from the start.
        try:
            created = pb_grpc.ChatServiceStub(channel_a).CreateConversation(
                pb.CreateConversationRequest(
                    kind=pb.CONVERSATION_KIND_PRIVATE, members=["bob"], conversation_id=conversation
                ),
                metadata=auth(args.token_alice),
                timeout=deadline.check("calling CreateConversation"),
            )
        except grpc.RpcError as e:
            raise rpc_error("alice's CreateConversation on gateway A", e) from None
        if not created.created or created.conversation.conversation_id != conversation:
            raise Failure(f"CreateConversation answered {created}, expected a new {conversation!r}")
        if created.conversation.created_by != "alice":
            raise Failure(f"the conversation names {created.conversation.created_by!r} as its creator, not alice")

        alice = Stream("alice", "A", pb, pb_grpc.ChatServiceStub(channel_a), args.token_alice, deadline)
        streams.append(alice)
        bob = Stream("bob", "B", pb, pb_grpc.ChatServiceStub(channel_b), args.token_bob, deadline)
        streams.append(bob)

        snapshot = alice.join(conversation)
        if "alice" not in snapshot.online:
            raise Failure(f"alice's PresenceSnapshot does not list her online: {list(snapshot.online)}")
        snapshot = bob.join(conversation)
        if "bob" not in snapshot.online:
            raise Failure(f"bob's PresenceSnapshot does not list him online: {list(snapshot.online)}")

        # alice sends n messages back to back on her stream.
        cmids = [f"{conversation}-m{i}" for i in range(n)]
        bodies = [f"message {i} from a generic client" for i in range(n)]
        for i in range(n):
            alice.send_frame(
                f"req-{i}",
                send=pb.SendFrame(conversation_id=conversation, client_message_id=cmids[i], body=bodies[i]),
            )

        def all_accepted(events: list[Any]) -> Optional[dict[str, Any]]:
            accepted = {
                e.send_accepted.request_id: e.send_accepted
                for e in events
                if e.WhichOneof("event") == "send_accepted"
            }
            return accepted if all(f"req-{i}" in accepted for i in range(n)) else None

        accepted = alice.wait_until(f"waiting for {n} SendAccepted", all_accepted)
        for i in range(n):
            a = accepted[f"req-{i}"]
            if a.client_message_id != cmids[i] or a.conversation_id != conversation or not a.message_id:
                raise Failure(f"SendAccepted for req-{i} does not match its send: {a}")
            if a.duplicate:
                raise Failure(f"SendAccepted for req-{i} says duplicate, but every client_message_id is new: {a}")
        accepted_seqs = sorted(accepted[f"req-{i}"].seq for i in range(n))
        if len(set(accepted_seqs)) != n:
            raise Failure(f"SendAccepted seqs are not distinct: {accepted_seqs}")

        def all_from_alice(events: list[Any]) -> Optional[list[Any]]:
            got = messages(events, conversation, "alice")
            return got if len(got) >= n else None

        got = bob.wait_until(f"waiting for {n} messages from alice", all_from_alice)
        seqs = [m.seq for m in got]
        if any(b <= a for a, b in zip(seqs, seqs[1:])):
            raise Failure(f"bob's messages are not in increasing seq order: {seqs}")
        if sorted(seqs) != accepted_seqs:
            raise Failure(f"bob's seqs {seqs} differ from the accepted seqs {accepted_seqs}")
        for i, m in enumerate(got):
            if m.body != bodies[i] or m.client_message_id != cmids[i]:
                raise Failure(
                    f"bob's message {i} (seq {m.seq}) is {m.client_message_id!r}/{m.body!r}, "
                    f"expected {cmids[i]!r}/{bodies[i]!r}"
                )
            if not m.message_id or m.sent_at_ms <= 0:
                raise Failure(f"bob's message {i} lacks a message_id or sent_at_ms: {m}")

        # bob sends once with the unary call on gateway B; alice sees it.
        cmid = f"{conversation}-unary"
        body = "unary hello from bob"
        try:
            sent = pb_grpc.ChatServiceStub(channel_b).SendMessage(
                pb.SendMessageRequest(conversation_id=conversation, client_message_id=cmid, body=body),
                metadata=auth(args.token_bob),
                timeout=deadline.check("calling SendMessage"),
            )
        except grpc.RpcError as e:
            raise rpc_error("bob's unary SendMessage on gateway B", e) from None
        if sent.conversation_id != conversation or sent.client_message_id != cmid or not sent.message_id:
            raise Failure(f"SendMessage answered {sent}")
        if sent.seq <= seqs[-1]:
            raise Failure(f"SendMessage got seq {sent.seq}, not after alice's last {seqs[-1]}")
        def bobs_unary(events: list[Any]) -> Optional[Any]:
            return next((m for m in messages(events, conversation, "bob") if m.client_message_id == cmid), None)

        unary = alice.wait_until("waiting for bob's unary message", bobs_unary)
        if unary.body != body or unary.seq != sent.seq or unary.message_id != sent.message_id:
            raise Failure(f"alice received {unary}, expected {sent} with body {body!r}")

        # Exactly once: bob's own unary message follows alice's in seq order on
        # his stream, so once it is there, every copy of hers would be too.
        bob.wait_until("waiting for bob's own unary message on his stream", bobs_unary)
        total = messages(bob.received, conversation, "alice")
        if len(total) != n:
            raise Failure(f"bob received {len(total)} messages from alice, expected exactly {n}")

        return (
            f"generic client OK: proto {os.path.basename(args.proto)}; echo on gateways {gw_a} and {gw_b}; "
            f"alice@A sent {n} (all accepted), bob@B received {n} in order (seq {seqs[0]}..{seqs[-1]}); "
            f"bob's unary SendMessage (seq {sent.seq}) reached alice; {time.monotonic() - (deadline.end - deadline.seconds):.1f} s"
        )
    finally:
        for stream in streams:
            stream.close()
        channel_a.close()
        channel_b.close()


def participate(args: argparse.Namespace, work_dir: str) -> str:
    """One member of a conversation others chat in from other clients."""
    deadline = Deadline(args.timeout)
    pb, pb_grpc = generate_stubs(args.proto, work_dir)
    conversation = args.conversation
    expected = []
    for item in args.expect:
        sender, sep, body = item.partition("=")
        if not sep or not sender:
            raise Failure(f"--expect {item!r}: give SENDER=BODY")
        expected.append((sender, body))
    channel = channel_for(args.gateway_a)
    stream = Stream("participant", "A", pb, pb_grpc.ChatServiceStub(channel), args.token_alice, deadline)
    try:
        stream.join(conversation)
        if args.say:
            stream.send_frame(
                "say",
                send=pb.SendFrame(conversation_id=conversation, client_message_id=f"{conversation}-py", body=args.say),
            )
            stream.wait_until(
                "waiting for its message to be accepted",
                lambda events: next((e for e in events if e.WhichOneof("event") == "send_accepted"), None),
            )

        def received(events: list[Any]) -> Optional[list[Any]]:
            got = [e.message for e in events if e.WhichOneof("event") == "message" and e.message.conversation_id == conversation]
            seen = [(m.sender, m.body) for m in got]
            return got if all(want in seen for want in expected) else None

        got = stream.wait_until(f"waiting for {expected}", received)
        for want in expected:
            copies = sum(1 for m in got if (m.sender, m.body) == want)
            if copies != 1:
                raise Failure(f"received {want} {copies} times, expected once")
        seqs = [m.seq for m in got]
        if any(b <= a for a, b in zip(seqs, seqs[1:])):
            raise Failure(f"messages are not in increasing seq order: {seqs}")
        return f"participant OK: said {args.say!r}, received {len(expected)} expected messages in order (seqs {seqs})"
    finally:
        stream.close()
        channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", required=True, help="path to chat.proto")
    parser.add_argument("--gateway-a", required=True, help="alice's gateway: http://host:port or host:port")
    parser.add_argument("--gateway-b", help="bob's gateway: http://host:port or host:port")
    parser.add_argument("--token-alice", required=True, help="a JWT for user alice (the participant's, with --participant)")
    parser.add_argument("--token-bob", help="a JWT for user bob")
    parser.add_argument("--participant", action="store_true", help="be one member among other clients (see above)")
    parser.add_argument("--say", default="", help="with --participant: the message to send after joining")
    parser.add_argument("--expect", action="append", default=[], help="with --participant: SENDER=BODY to receive")
    parser.add_argument("--conversation", required=True, help="a conversation id (fresh per run)")
    parser.add_argument("--count", type=int, default=20, help="messages alice sends (default 20)")
    parser.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds (default 30)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not args.participant and not (args.gateway_b and args.token_bob):
        parser.error("--gateway-b and --token-bob are required (unless --participant)")
    try:
        with tempfile.TemporaryDirectory(prefix="chat-stubs-") as work_dir:
            print((participate if args.participant else run)(args, work_dir), flush=True)
        return 0
    except Failure as e:
        print(f"generic client FAILED: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
