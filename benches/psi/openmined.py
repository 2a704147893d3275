"""OpenMined PSI 2.0.6 on n x n random 64-bit keys with 50 % overlap, cardinality only (the
size, as veil's size-only mode): the client request, the server's setup and response, and the
client's count, with the CPU time of the process and the bytes of each message."""
import random
import resource
import sys
import time

import private_set_intersection.python as psi


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = random.Random(13)
    client_keys = [str(rng.getrandbits(64)) for _ in range(n)]
    shared = n // 2
    server_keys = client_keys[:shared] + [str(rng.getrandbits(64)) for _ in range(n - shared)]

    wall, start = time.perf_counter(), cpu()
    client = psi.client.CreateWithNewKey(False)  # False: the size only
    server = psi.server.CreateWithNewKey(False)
    # The server's keys as a Golomb-compressed set would trade exactness for bytes; a raw
    # encrypted set is the like of veil's exchange.
    setup = server.CreateSetupMessage(0.0, n, server_keys, psi.DataStructure.RAW)
    request = client.CreateRequest(client_keys)
    response = server.ProcessRequest(request)
    size = client.GetIntersectionSize(setup, response)
    cpu_s, wall_s = cpu() - start, time.perf_counter() - wall
    wire = len(setup.SerializeToString()) + len(request.SerializeToString()) + len(
        response.SerializeToString()
    )
    assert size == shared, (size, shared)
    print(f"  wall {wall_s:.1f} s, CPU {cpu_s:.1f} s, on the wire {wire / 1e6:.2f} MB, "
          f"intersection {size} as expected")


if __name__ == "__main__":
    main()
