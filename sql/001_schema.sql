-- Schema sms: every object of the State Memory Service lives here.
CREATE SCHEMA IF NOT EXISTS sms;
