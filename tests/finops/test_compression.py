import gzip

from django.urls import reverse

from tests import factories


def test_pages_are_sent_compressed_to_browsers_that_accept_it(client, db):
    client.force_login(factories.leadership_user())
    plain = client.get(reverse("data"))
    packed = client.get(reverse("data"), headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert b"No data yet" in gzip.decompress(packed.content)
    assert "Accept-Encoding" in packed.headers["vary"]
