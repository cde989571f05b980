"""Masking credentials in storage URLs (lrm_mup._secrets), on the URLs that broke the old masking: an empty user, a
password holding `@`, `/` or `?`, secrets in the query; and a driver's error text with the URL echoed in it."""
import pytest

from lrm_mup._secrets import driver_url, has_secret, mask_text, mask_url, secrets

PW = "s3cr3t-Pw"

CASES = [
    (f"postgresql://alice:{PW}@db.example:5432/sweeps", "postgresql://alice:***@db.example:5432/sweeps"),
    (f"postgresql://:{PW}@127.0.0.1/sweeps", "postgresql://:***@127.0.0.1/sweeps"),  # an empty user
    ("postgresql://alice:p@ss@host/db", "postgresql://alice:***@host/db"),  # the last @ ends the password
    ("postgresql://alice:a@b@c@host/db", "postgresql://alice:***@host/db"),
    ("postgresql://alice:pa/ss:w@host/db", "postgresql://alice:***@host/db"),
    ("postgresql://alice:pa?ss@host/db?sslmode=require", "postgresql://alice:***@host/db?sslmode=require"),
    (f"postgresql://alice@host/db?password={PW}", "postgresql://alice@host/db?password=***"),
    (f"postgresql://host/db?sslmode=require&PASSWORD={PW}&connect_timeout=5",
     "postgresql://host/db?sslmode=require&PASSWORD=***&connect_timeout=5"),
    ("postgresql://alice@host/db?passwd=a1&pwd=b2&sslpassword=c3&sslkey=/k/key.pem&pass%77ord=d4&token=e5",
     "postgresql://alice@host/db?passwd=***&pwd=***&sslpassword=***&sslkey=***&pass%77ord=***&token=***"),
    ("postgresql://host/db?password=p@ss", "postgresql://host/db?password=***"),  # an @ in the query is no userinfo
    ("postgresql://alice@host/db", "postgresql://alice@host/db"),  # nothing secret: unchanged, still usable
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("not a url", "not a url"),
]


@pytest.mark.parametrize("url,masked", CASES, ids=[c[0][:40] for c in CASES])
def test_every_secret_of_a_url_is_masked_and_the_rest_kept(url, masked):
    assert mask_url(url) == masked
    assert mask_url(masked) == masked  # idempotent: masked forms compare
    assert has_secret(url) == (masked != url)
    for secret in secrets(url):
        assert secret not in masked


def test_urls_that_differ_only_in_their_secrets_mask_alike_and_others_do_not():
    assert mask_url("postgresql://a:one@h/db") == mask_url("postgresql://a:two@h/db")
    assert mask_url("postgresql://a:one@h/db") != mask_url("postgresql://b:one@h/db")
    assert mask_url("postgresql://a:one@h/db") != mask_url("postgresql://a:one@h/other")


def test_a_raw_at_in_the_password_reaches_the_driver_encoded():
    assert driver_url("postgresql://alice:p@ss@host/db") == "postgresql://alice:p%40ss@host/db"
    assert driver_url("postgresql://:p@ss@host/db?sslmode=require") == "postgresql://:p%40ss@host/db?sslmode=require"
    assert driver_url("postgresql://alice:plain@host/db") == "postgresql://alice:plain@host/db"


def test_a_driver_message_echoing_the_url_or_the_password_is_masked():
    url = f"postgresql://alice:{PW}@x@host/db?sslpassword=key-pass-1"  # the password is PW@x
    text = (f"Could not parse SQLAlchemy URL from string 'postgresql+psycopg2://alice:{PW}%40x@host/db"
            f"?sslpassword=key-pass-1'; password '{PW}@x' rejected; {driver_url(url)}")
    masked = mask_text(text, url)
    assert f"{PW}@x" not in masked and f"{PW}%40x" not in masked and "key-pass-1" not in masked
    assert "Could not parse SQLAlchemy URL" in masked
    other = "connect failed for postgresql://bob:hunter22@elsewhere/db"  # a URL the caller did not name
    assert "hunter22" not in mask_text(other) and "postgresql://bob:***@elsewhere/db" in mask_text(other)
