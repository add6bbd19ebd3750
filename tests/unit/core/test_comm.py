import pytest

from sagellm.core.comm import CommBackendProtocol, TransferRequest, TransferResult


def test_chunk_ranges():
    r = TransferRequest(transfer_id="t1", peer="rank:1", tag="blk", num_bytes=10, chunk_bytes=4)
    assert r.num_chunks == 3
    assert r.chunk_ranges() == ((0, 4), (4, 4), (8, 2))
    assert TransferRequest(transfer_id="t", peer="p", tag="g", num_bytes=0).chunk_ranges() == ()
    exact = TransferRequest(transfer_id="t", peer="p", tag="g", num_bytes=8, chunk_bytes=4)
    assert exact.chunk_ranges() == ((0, 4), (4, 4))


def test_request_validation():
    with pytest.raises(ValueError, match="TransferRequest.chunk_bytes: got 0; accepted: an integer >= 1"):
        TransferRequest(transfer_id="t", peer="p", tag="g", num_bytes=1, chunk_bytes=0)
    with pytest.raises(ValueError, match="TransferRequest.peer: got ''; accepted: a non-empty string"):
        TransferRequest(transfer_id="t", peer="", tag="g", num_bytes=1)
    with pytest.raises(ValueError, match="TransferRequest.timeout_s: got -1; accepted: a finite number > 0"):
        TransferRequest(transfer_id="t", peer="p", tag="g", num_bytes=1, timeout_s=-1)


def test_result():
    r = TransferResult(transfer_id="t", ok=True, bytes_moved=1000, num_chunks=1, elapsed_s=0.5, data=bytearray(b"ab"))
    assert r.bandwidth_bytes_per_s == 2000.0
    assert r.data == b"ab"
    assert TransferResult.from_json(r.to_json()) == r
    assert TransferResult(transfer_id="t", ok=True, bytes_moved=1, num_chunks=1, elapsed_s=0).bandwidth_bytes_per_s == 0.0
    with pytest.raises(ValueError, match="TransferResult.error: got ''; accepted: '' when ok is True, a message when ok is False"):
        TransferResult(transfer_id="t", ok=False, bytes_moved=0, num_chunks=0, elapsed_s=0.0)
    with pytest.raises(ValueError, match="TransferResult.error: got 'boom'"):
        TransferResult(transfer_id="t", ok=True, bytes_moved=0, num_chunks=0, elapsed_s=0.0, error="boom")


class LoopBack:
    name = "loopback"

    def __init__(self):
        self.buffers = {}

    def send(self, request, payload):
        self.buffers[(request.peer, request.tag)] = bytes(payload)
        return TransferResult(request.transfer_id, True, len(payload), request.num_chunks, 0.0)

    def recv(self, request):
        data = self.buffers.pop((request.peer, request.tag))
        return TransferResult(request.transfer_id, True, len(data), request.num_chunks, 0.0, data=data)

    def bandwidth_estimate(self, peer):
        return 1e9

    def close(self):
        self.buffers.clear()


def test_protocol_is_runtime_checkable():
    backend = LoopBack()
    assert isinstance(backend, CommBackendProtocol)
    req = TransferRequest(transfer_id="t", peer="self", tag="k", num_bytes=3, chunk_bytes=2)
    assert backend.send(req, b"xyz").num_chunks == 2
    assert backend.recv(req).data == b"xyz"
