"""What goes over the wire and how members collaborate: the A2A binding, the signed-message
extension, redaction, vertical routers and horizontal protocols."""
