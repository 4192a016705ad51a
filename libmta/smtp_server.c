typedef int mta_stub_smtp_server;
