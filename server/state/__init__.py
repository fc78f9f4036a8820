"""What is kept between requests and shared by replicas: job records and their events, the
URL images, cancels, and their Redis versions (redis/)."""
