"""The registry lifecycle (DESIGN section 10): `shipit prune` and `shipit promote`.

records       what a repository holds (`Holdings`), the decision (`Action`, `PrunePlan`)
retention     the retention decision, a pure function of holdings, policy and time
protect       the tags never removed: floating ones by shape, and today's plan
inventory     reading a repository over the registry API into `Holdings`
capabilities  probing whether a registry deletes, and whether it deletes tags alone
apply         carrying out one repository's plan, checking that nothing moved
prune         the whole command: every image with a policy, every registry
report        the tables and the JSON documents
copying       one image with its signatures, attestations and referrers into a target
promote       the whole command: verify at the source, then copy to every target
"""
