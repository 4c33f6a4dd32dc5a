"""A workload written against py-spiffe (the PyPI package `spiffe`), the
SPIFFE project's own Python library, talking to a Signet agent.

Run with SPIFFE_ENDPOINT_SOCKET set:

    py_spiffe_client.py [--authority NAME] AUDIENCE TRUST_DOMAIN

Prints one JSON object on stdout with what it saw; any failure to talk to
the agent or to parse what it served is an exception (non-zero exit).
Judgement is the caller's: this script reports, the Rust test asserts.

--authority sets gRPC's `grpc.default_authority` channel option. py-spiffe
has no setting for it, so the script wraps `grpc.insecure_channel`. Without
it grpc's C core sends the percent-encoded socket path as `:authority`
(e.g. `tmp%2Fdir%2Fagent.sock`), which is what every py-spiffe user sends.
"""

import argparse
import json
import sys

import grpc

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spiffe import (
    JwtSvid,
    SpiffeId,
    TrustDomain,
    WorkloadApiClient,
    X509Source,
)
from spiffe.svid.errors import JwtSvidError
from spiffe.workloadapi.errors import ValidateJwtSvidError
from spiffe.errors import PySpiffeError


def public_bytes(key):
    return key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def san(cert, kind):
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(kind))


def chains_to(chain, authorities):
    """Whether each certificate is signed by the next and the last by one
    of the bundle's authorities (signatures only; time and policy are the
    TLS library's business)."""
    for child, parent in zip(chain, chain[1:]):
        child.verify_directly_issued_by(parent)
    last = chain[-1]
    for authority in authorities:
        try:
            last.verify_directly_issued_by(authority)
            return True
        except Exception:  # noqa: BLE001 - wrong issuer or signature: try the next
            continue
    return False


def set_default_authority(authority):
    plain = grpc.insecure_channel

    def insecure_channel(target, options=None, compression=None):
        options = list(options or []) + [("grpc.default_authority", authority)]
        return plain(target, options=options, compression=compression)

    grpc.insecure_channel = insecure_channel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--authority")
    parser.add_argument("audience")
    parser.add_argument("trust_domain")
    args = parser.parse_args()
    if args.authority:
        set_default_authority(args.authority)
    audience, trust_domain_name = args.audience, args.trust_domain
    trust_domain = TrustDomain(trust_domain_name)
    out = {}

    with WorkloadApiClient(default_timeout=30) as client:
        # X.509: the context carries the SVIDs and the bundles together.
        context = client.fetch_x509_context()
        svid = context.default_svid
        bundle = context.x509_bundle_set.get_bundle_for_trust_domain(trust_domain)
        leaf = svid.leaf
        out["x509"] = {
            "svid_count": len(context.x509_svids),
            "spiffe_id": str(svid.spiffe_id),
            "trust_domain": svid.spiffe_id.trust_domain.name,
            "chain_length": len(svid.cert_chain),
            "leaf_uri_sans": san(leaf, x509.UniformResourceIdentifier),
            "leaf_dns_sans": san(leaf, x509.DNSName),
            "key_matches_leaf": public_bytes(svid.private_key.public_key())
            == public_bytes(leaf.public_key()),
            "bundle_trust_domains": sorted(
                b.trust_domain.name for b in context.x509_bundle_set.bundles
            ),
            "bundle_authorities": len(bundle.x509_authorities) if bundle else 0,
            "bundle_pems": sorted(
                a.public_bytes(serialization.Encoding.PEM).decode()
                for a in (bundle.x509_authorities if bundle else [])
            ),
            "chain_verifies": bool(bundle)
            and chains_to(svid.cert_chain, bundle.x509_authorities),
        }

        # The streaming side, as long-running workloads consume it.
        source = X509Source(workload_api_client=client, timeout_in_seconds=30)
        try:
            out["x509_source"] = {
                "spiffe_id": str(source.get_x509_context().default_svid.spiffe_id),
                "has_bundle": source.get_bundle_for_trust_domain(trust_domain)
                is not None,
            }
        finally:
            source.close()

        # JWT: fetch, then validate by the agent and locally.
        jwt_svid = client.fetch_jwt_svid(audience={audience})
        token = jwt_svid.token
        by_agent = client.validate_jwt_svid(token, audience)
        try:
            client.validate_jwt_svid(token, audience + "-not")
            wrong_audience_rejected = False
        except ValidateJwtSvidError:
            wrong_audience_rejected = True

        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(trust_domain)
        local = JwtSvid.parse_and_validate(token, jwt_bundle, {audience})

        # Flip a character in the signature: local validation must refuse it.
        head, sig = token.rsplit(".", 1)
        flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
        try:
            JwtSvid.parse_and_validate(head + "." + flipped, jwt_bundle, {audience})
            tampered_rejected = False
        except (JwtSvidError, PySpiffeError):
            tampered_rejected = True

        out["jwt"] = {
            "spiffe_id": str(jwt_svid.spiffe_id),
            "audience": sorted(jwt_svid.audience),
            "expiry": jwt_svid.expiry,
            "validated_by_agent": str(by_agent.spiffe_id),
            "validated_locally": str(local.spiffe_id),
            "wrong_audience_rejected": wrong_audience_rejected,
            "tampered_rejected": tampered_rejected,
            "bundle_trust_domains": sorted(
                b.trust_domain.name for b in jwt_bundles.bundles
            ),
            "bundle_keys": len(jwt_bundle.jwt_authorities) if jwt_bundle else 0,
        }

    # The ID parses as py-spiffe understands SPIFFE IDs.
    SpiffeId(out["x509"]["spiffe_id"])
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
