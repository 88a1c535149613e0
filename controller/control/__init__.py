"""The roles that act on a cluster: deploy, the requester, the controller service and its
registry, the exactness check, and the broker ACL."""
