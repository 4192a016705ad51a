typedef int mta_stub_spool;
