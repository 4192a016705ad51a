struct mta_smtpd { int stub; };
