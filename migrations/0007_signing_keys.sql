-- The keys that sign access tokens (Ed25519, ADR 0009), shared by every gateway process.
--
-- A key signs from `activated_at` until `retired_at`: the signer is the newest key active at
-- a moment. A rotation inserts the next key to activate a little later (so that every process
-- has loaded it, and verifies its tokens, before any is signed with it), and retires the
-- previous one at that same moment. A retired key still verifies until `removed_at`, which is
-- at least the longest token lifetime after its retirement; after that it verifies nothing.
--
-- The private key is a PKCS#8 document sealed with the secrets key derived from the platform's
-- master key, which never reaches the database (purpose `jwt signing key:<kid>`). Reading this
-- table does not give the power to sign; writing to it does give the power to add a key that
-- verifies. Once a key is retired and its signing time is over, its private key is erased.
CREATE TABLE signing_keys (
    kid                text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
    algorithm          text NOT NULL CHECK (algorithm = 'EdDSA'),
    public_key         bytea NOT NULL CHECK (octet_length(public_key) = 32),
    private_key_sealed text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    activated_at       timestamptz NOT NULL,
    retired_at         timestamptz,
    removed_at         timestamptz,
    CONSTRAINT retirement_sets_the_removal CHECK ((retired_at IS NULL) = (removed_at IS NULL)),
    CONSTRAINT retired_after_activation CHECK (retired_at IS NULL OR retired_at >= activated_at),
    CONSTRAINT removed_after_retirement CHECK (removed_at IS NULL OR removed_at >= retired_at),
    CONSTRAINT only_retired_keys_lose_their_private_key
        CHECK (private_key_sealed IS NOT NULL OR retired_at IS NOT NULL)
);

-- The gateway loads the keyring, makes the first key, and rotates. It never deletes a key, and
-- never changes a key's identity, material or activation.
GRANT SELECT, INSERT ON signing_keys TO platform_app;
GRANT UPDATE (retired_at, removed_at, private_key_sealed) ON signing_keys TO platform_app;
