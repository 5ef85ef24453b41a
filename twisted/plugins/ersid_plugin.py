from twisted.application.service import ServiceMaker

ersid = ServiceMaker(
    "Ersid",
    "ersid.tap",
    "A durable HTTP key-value store.",
    "ersid",
)
