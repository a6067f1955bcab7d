"""The deployment tools behind ``gochat-admin``: what an operator runs on the broker's
host and at the CA, never part of a running daemon.

- :mod:`~appliance.deploy.admin`: the ``gochat-admin`` command line;
- :mod:`~appliance.deploy.accounts`: broker password accounts (Mosquitto's hashes);
- :mod:`~appliance.deploy.ca`: the deployment CA on disk, on top of
  :mod:`~appliance.deploy.pki` (keys, certificates, requests, CRLs; the appliance
  uses it too, to make its own key and request);
- :mod:`~appliance.deploy.revocation`: cutting a revoked device's open session;
- :mod:`~appliance.deploy.brokerconf`: a private broker's configuration rendered from
  the shipped one (``make run``, the tests);
- :mod:`~appliance.deploy.files`: the one way they write files (atomically, readable by
  the broker where it must be).
"""
