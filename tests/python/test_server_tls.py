"""`kvserve serve --ssl-keyfile --ssl-certfile` (vLLM's flags): HTTPS with a certificate of a test CA
(trustme), the openai client over it; client certificates required with --ssl-ca-certs and
--ssl-cert-reqs 2; plain HTTP refused; files that cannot be read stop the server before the model
loads."""

from __future__ import annotations

import ssl

import httpx
import openai
import pytest
import trustme

from server_process import ServerProcess

MODEL = "tiny"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def server_files(ca, tmp_path_factory):
    """(key file, certificate chain file) of a server certificate for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    certificate = ca.issue_cert("127.0.0.1")
    key, chain = directory / "server.key", directory / "server.pem"
    certificate.private_key_pem.write_to_path(str(key))
    certificate.private_key_and_cert_chain_pem.write_to_path(str(chain))
    return str(key), str(chain)


def client_context(ca, client_certificate=None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_certificate is not None:
        client_certificate.configure_cert(context)
    return context


def test_the_server_answers_over_https(tiny_model_dir, ca, server_files):
    key, chain = server_files
    context = client_context(ca)
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", MODEL, "--ssl-keyfile", key,
                       "--ssl-certfile", chain, verify=context) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=context) as http:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
            response = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0)
            assert response.usage.completion_tokens == 3
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the test CA
            httpx.get(server.url + "/health")
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the HTTPS port
            httpx.get(server.url.replace("https://", "http://") + "/health")


def test_client_certificates_when_required(tiny_model_dir, ca, server_files, tmp_path):
    key, chain = server_files
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with_certificate = client_context(ca, ca.issue_cert("client@example.com"))
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--ssl-keyfile", key, "--ssl-certfile", chain,
                       "--ssl-ca-certs", str(ca_file), "--ssl-cert-reqs", "2", verify=with_certificate) as server:
        assert httpx.get(server.url + "/health", verify=with_certificate).status_code == 200
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.get(server.url + "/health", verify=client_context(ca))


def test_tls_files_that_cannot_be_used_stop_the_server_at_once(tiny_model_dir, server_files, tmp_path):
    key, chain = server_files
    model = tiny_model_dir("LlamaForCausalLM")
    with pytest.raises(RuntimeError, match="HTTPS needs both --ssl-keyfile and --ssl-certfile"):
        ServerProcess(model, "--ssl-keyfile", key)
    with pytest.raises(RuntimeError, match="--ssl-ca-certs and --ssl-cert-reqs go with"):
        ServerProcess(model, "--ssl-cert-reqs", "2")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(RuntimeError, match=f"cannot use --ssl-keyfile {key}, --ssl-certfile {missing}"):
        ServerProcess(model, "--ssl-keyfile", key, "--ssl-certfile", missing)
