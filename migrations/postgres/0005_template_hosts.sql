-- Which hosts hold a snapshot template's files: the host that made it, and every host
-- it was copied to since. A capsule from the template on another host gets a copy
-- first (the control plane relays it from a host listed here).
CREATE TABLE template_hosts (
    template_id UUID NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    host_id     UUID NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    PRIMARY KEY (template_id, host_id)
);
