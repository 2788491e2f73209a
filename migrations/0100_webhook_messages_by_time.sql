-- `recover?since=T` looks for the messages since T that an endpoint never received (made
-- while it was disabled): by time, not by scanning every message kept.
CREATE INDEX webhook_messages_recorded ON webhook_messages (recorded_at);
