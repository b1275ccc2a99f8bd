-- The built-in template is the default image (Debian with the unprivileged user
-- `wrenn-user`, passwordless sudo), no longer the host's root filesystem: commands run
-- as that user in /home/wrenn-user by default. Only the seeded value is changed.
UPDATE templates SET default_user = 'wrenn-user'
WHERE id = X'00000000000000000000000000000000' AND default_user = 'root';
