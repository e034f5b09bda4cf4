"""Protocol adapters: per wire protocol a sans-IO codec and a trio session driver."""
