"""What goes over the wire and how members collaborate, as pure logic: extension URIs,
request options, the redaction interface, vertical routers and horizontal protocols.
Signing and verification are trust/."""
